//! `husk volume create|ls|inspect|rm|prune`: the named volumes appliances
//! keep their data in, as `docker volume` manages its local ones. See
//! `crate::volumes` for where they live and how use is known.

use std::process::ExitCode;

use crate::vms::VmDir;
use crate::volumes::{self, Volume};

#[derive(clap::Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Make a volume (a name of its own when none is given) and print its
    /// name; one that exists is left as it is
    Create { name: Option<String> },
    /// List the volumes: when made, and the appliances that use them
    Ls {
        /// Only the names
        #[arg(short, long)]
        quiet: bool,
        /// Each as TEMPLATE says, as docker's: {{.Name}} {{.Driver}}
        /// {{.Mountpoint}} {{.Created}} {{.UsedBy}}; "table TEMPLATE";
        /// "json"
        #[arg(long, value_name = "TEMPLATE")]
        format: Option<String>,
    },
    /// Show volumes as JSON: name, host folder, when made, size, users
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove volumes and the data in them; not one a running appliance,
    /// or a detached appliance not yet removed, uses (with --force, also
    /// one that only a stopped appliance names)
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove every volume no appliance uses, and the data in them
    Prune {
        /// Do not ask first
        #[arg(short, long)]
        force: bool,
    },
    /// A foreground run's reaper: removes the anonymous volumes named on
    /// stdin when its end comes (see volumes::reap_when_done)
    #[command(hide = true)]
    Reap,
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Create { name } => {
            let name = name.unwrap_or_else(|| crate::vms::random_hex(16));
            volumes::check_name(&name)?;
            Volume::at(&volumes::root()?, &name).create()?;
            println!("{name}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Ls { quiet, format } => {
            let format = format
                .as_deref()
                .map(super::listing::Format::parse)
                .transpose()?;
            let all = Volume::all()?;
            if quiet {
                all.iter().for_each(|v| println!("{}", v.name));
                return Ok(ExitCode::SUCCESS);
            }
            const COLUMNS: [(&str, &str); 5] = [
                ("Name", "VOLUME NAME"),
                ("Driver", "DRIVER"),
                ("Mountpoint", "MOUNTPOINT"),
                ("Created", "CREATED"),
                ("UsedBy", "USED BY"),
            ];
            let users = Users::now()?;
            let now = crate::vms::now_ms();
            let mut rows = Vec::new();
            for v in &all {
                let created = v.meta().map_or("?".into(), |m| {
                    format!(
                        "{} ago",
                        crate::vms::human_duration(now.saturating_sub(m.created_ms))
                    )
                });
                let used_by = users.of(v)?.join(", ");
                rows.push(super::listing::row(&COLUMNS, |field| match field {
                    "Name" => v.name.clone(),
                    "Driver" => "local".into(),
                    "Mountpoint" => v.data().display().to_string(),
                    "Created" => created.clone(),
                    _ => used_by.clone(),
                }));
            }
            if let Some(format) = format {
                format.print(&COLUMNS, &rows)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut table = vec![["NAME", "CREATED", "USED BY"].map(String::from).to_vec()];
            for r in &rows {
                table.push(
                    ["Name", "Created", "UsedBy"]
                        .map(|f| r[f].as_str().unwrap_or_default().to_string())
                        .to_vec(),
                );
            }
            super::print_columns(&table);
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { names } => {
            let users = Users::now()?;
            let mut shown = Vec::new();
            let code = super::each_name(&names, |name| {
                let v = Volume::find(name)?;
                let created = v.meta().and_then(|m| {
                    let ns = i128::from(m.created_ms) * 1_000_000;
                    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ns).ok()?;
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                });
                shown.push(serde_json::json!({
                    "Name": v.name,
                    "Mountpoint": v.data(),
                    "CreatedAt": created,
                    "Size": builder::cache::disk_usage(&v.data()),
                    "UsedBy": users.of(&v)?,
                }));
                Ok(())
            })?;
            println!("{}", serde_json::to_string_pretty(&shown)?);
            Ok(code)
        }
        Command::Rm { force, names } => {
            let users = Users::now()?;
            super::each_name(&names, |name| {
                let v = Volume::find(name)?;
                let using = users.naming(&v.name);
                if !using.is_empty() && !force {
                    anyhow::bail!(
                        "the volume {name} is in use by {}: husk rm it first, or husk volume rm -f",
                        using.join(", ")
                    );
                }
                v.remove()?;
                println!("{name}");
                Ok(())
            })
        }
        Command::Prune { force } => {
            if !force && !super::confirm("remove every volume no appliance uses, and its data")? {
                anyhow::bail!("nothing removed");
            }
            Ok(super::prune(doomed()?))
        }
        Command::Reap => {
            volumes::reap(std::io::stdin().lock())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The volumes no appliance uses, as `husk volume prune` (and `husk
/// system prune --volumes`) removes them.
pub fn doomed() -> anyhow::Result<Vec<super::Doomed<'static>>> {
    let users = Users::now()?;
    let mut out: Vec<super::Doomed> = Vec::new();
    for v in Volume::all()? {
        if !users.of(&v)?.is_empty() {
            continue;
        }
        let bytes = builder::cache::disk_usage(&v.dir);
        out.push((Some(v.name.clone()), bytes, Box::new(move || v.remove())));
    }
    Ok(out)
}

/// What volumes take, for `husk system df`; those no appliance uses are
/// what prune frees.
pub fn space() -> anyhow::Result<super::Space> {
    let users = Users::now()?;
    let mut space = super::Space::default();
    for v in Volume::all()? {
        let bytes = builder::cache::disk_usage(&v.dir);
        space.total += 1;
        space.bytes += bytes;
        if users.of(&v)?.is_empty() {
            space.reclaimable += bytes;
        } else {
            space.active += 1;
        }
    }
    Ok(space)
}

/// Who uses volumes (or networks): the detached appliances that name
/// them (running or not, until removed), and, through each volume's lock,
/// any run.
pub(crate) struct Users {
    /// (appliance, the volumes or networks it names)
    appliances: Vec<(String, Vec<String>)>,
}

impl Users {
    fn now() -> anyhow::Result<Self> {
        Self::naming_by(|s| s.volumes)
    }

    /// The detached appliances and what `names` takes from their state.
    pub(crate) fn naming_by(
        names: impl Fn(crate::vms::State) -> Vec<String>,
    ) -> anyhow::Result<Self> {
        let appliances = VmDir::all()?
            .into_iter()
            .filter_map(|vm| Some((vm.name.clone(), names(vm.current_state().ok()?))))
            .collect();
        Ok(Users { appliances })
    }

    /// The detached appliances that name `volume`.
    pub(crate) fn naming(&self, volume: &str) -> Vec<String> {
        self.appliances
            .iter()
            .filter(|(_, vols)| vols.iter().any(|v| v == volume))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Who uses `v`: the appliances that name it, else "a running VM"
    /// when a run holds it (a foreground `husk run`); none when unused.
    fn of(&self, v: &Volume) -> anyhow::Result<Vec<String>> {
        let users = self.naming(&v.name);
        if users.is_empty() && v.in_use()? {
            return Ok(vec!["a running VM".into()]);
        }
        Ok(users)
    }
}
