//! A detached appliance's recorded `husk run` command line (what `husk
//! start` runs again), changed an option at a time by `husk network
//! connect|disconnect` and `husk update`. Each change is checked by
//! parsing the result: the option comes or goes, and what runs (the
//! target and the command after `--`) stays word for word.

use super::net::NetMode;
use super::Args;

/// The recorded `husk run` command line `args` (a detached appliance's)
/// with `--net NAME` and a `--network-alias` for each of `aliases` put in
/// after its other networks' options: the same run, also on network
/// `name`, joined last (so the others keep their interfaces).
fn with_network(args: &[String], name: &str, aliases: &[String]) -> anyhow::Result<Vec<String>> {
    let before = crate::parse_run_args(args)?;
    let mut wanted = before.net.clone();
    wanted.push(NetMode::Network(name.into()));
    let mut added = vec!["--net".to_string(), name.to_string()];
    for alias in aliases {
        added.extend(["--network-alias".to_string(), alias.clone()]);
    }
    // The first place where the parsed networks come out in that order.
    for at in 1..=args.len() {
        let after: Vec<String> = args[..at]
            .iter()
            .chain(&added)
            .chain(&args[at..])
            .cloned()
            .collect();
        if crate::parse_run_args(&after).is_ok_and(|a| {
            a.net == wanted && a.target == before.target && a.command == before.command
        }) {
            return Ok(after);
        }
    }
    anyhow::bail!("its recorded command line takes no --net {name}")
}

/// [`with_network`], and with `ip` (`husk network connect --ip`) the run's
/// `--ip` on that network: it must be in the network's subnet, and the
/// run must have no `--ip` yet (a run takes one).
pub(crate) fn with_network_at(
    args: &[String],
    name: &str,
    aliases: &[String],
    ip: Option<std::net::Ipv4Addr>,
) -> anyhow::Result<Vec<String>> {
    let after = with_network(args, name, aliases)?;
    let Some(ip) = ip else {
        return Ok(after);
    };
    let (subnet, prefix) = crate::networks::Network::find(name)?.meta()?.subnet;
    if !crate::networks::overlap((subnet, prefix), (ip, 32)) {
        anyhow::bail!("--ip {ip} is not in {name}'s subnet {subnet}/{prefix}");
    }
    if let Some(had) = crate::parse_run_args(args)?.names.ip {
        anyhow::bail!("it has --ip {had} already, and a run takes one --ip");
    }
    with_option(&after, &["--ip"], &ip.to_string())
}

/// `args` as [`with_network`] takes them, without the option that put the
/// run on network `name` (`--net NAME`, `--network NAME` or their `=`
/// forms): the same run, off that network. `None` when no such option is
/// there (its appliance file's `[[vm.net]]` names the network).
pub(crate) fn without_network(args: &[String], name: &str) -> anyhow::Result<Option<Vec<String>>> {
    let before = crate::parse_run_args(args)?;
    let wanted: Vec<NetMode> = before
        .net
        .iter()
        .filter(|m| **m != NetMode::Network(name.into()))
        .cloned()
        .collect();
    let (mut after, removed) = without_options(args, &["--net", "--network"], Some(name), |a| {
        a.net == wanted && a.names.ip == before.names.ip
    })?;
    if !removed {
        return Ok(None);
    }
    // Its --ip, when that network's subnet held it, goes with it.
    let subnet = crate::networks::Network::find(name).and_then(|n| n.meta());
    if let (Some(ip), Ok(meta)) = (before.names.ip, subnet) {
        if crate::networks::overlap(meta.subnet, (ip, 32)) {
            let ip = ip.to_string();
            (after, _) = without_options(&after, &["--ip"], Some(&ip), |a| {
                a.net == wanted && a.names.ip.is_none()
            })?;
        }
    }
    Ok(Some(after))
}

/// `args` with option `flags[0]` set to `value`, in place of what any of
/// `flags` (its long and short names) set before.
pub(crate) fn with_option(
    args: &[String],
    flags: &[&str],
    value: &str,
) -> anyhow::Result<Vec<String>> {
    let (mut out, _) = without_options(args, flags, None, |_| true)?;
    out.splice(1..1, [flags[0].to_string(), value.to_string()]);
    crate::parse_run_args(&out).map_err(|e| anyhow::anyhow!("{} {value}: {e}", flags[0]))?;
    Ok(out)
}

/// `args` with each `--label-file` replaced by its labels, as `--label
/// KEY=VALUE`s put first (so the run's own `--label`s still win): a
/// detached appliance's labels are what its files held when it was made,
/// as docker reads them once, and a later start does not need the files.
pub(crate) fn with_label_files_read(args: &[String]) -> anyhow::Result<Vec<String>> {
    let parsed = crate::parse_run_args(args)?;
    let read = super::label_file_entries(&parsed.label_file)?;
    let (mut out, _) = without_options(args, &["--label-file"], None, |a| a.label_file.is_empty())?;
    let inline = read
        .into_iter()
        .flat_map(|(k, v)| ["--label".to_string(), format!("{k}={v}")]);
    out.splice(1..1, inline);
    Ok(out)
}

/// `args` (a `husk run -d` line) with each `--volumes-from` replaced by
/// the `--mount`s it stands for now: the appliance keeps them, whatever
/// becomes of the one it took them from.
pub(crate) fn with_volumes_from_read(args: &[String]) -> anyhow::Result<Vec<String>> {
    let mut parsed = crate::parse_run_args(args)?;
    super::merge_mounts(&mut parsed);
    let read = super::shares::all_volumes_from(&parsed)?;
    let (mut out, _) = without_options(args, &["--volumes-from"], None, |a| {
        a.volumes_from.is_empty()
    })?;
    let inline = read
        .iter()
        .flat_map(|v| ["--mount".to_string(), super::shares::mount_option(v)]);
    out.splice(1..1, inline);
    Ok(out)
}

/// `args` (a `husk run -d` line) without `--cidfile`: the file is
/// written once, when the appliance is made.
pub(crate) fn without_cidfile(args: &[String]) -> anyhow::Result<Vec<String>> {
    Ok(without_options(args, &["--cidfile"], None, |a| a.cidfile.is_none())?.0)
}

/// `args` without every option of `flags` (`FLAG VALUE` or
/// `FLAG=VALUE`; with `value`, only those given it) whose removal leaves a
/// run that parses, that `same` accepts, and that runs the same target and
/// command: options taken away, never a word of the command. Also whether
/// any was.
fn without_options(
    args: &[String],
    flags: &[&str],
    value: Option<&str>,
    same: impl Fn(&Args) -> bool,
) -> anyhow::Result<(Vec<String>, bool)> {
    let before = crate::parse_run_args(args)?;
    let given = |v: &str| value.is_none_or(|value| v == value);
    let (mut out, mut removed) = (args.to_vec(), false);
    let mut i = 1;
    while i < out.len() {
        let word = &out[i];
        let taken = if flags.contains(&word.as_str()) && out.get(i + 1).is_some_and(|v| given(v)) {
            2
        } else if flags.iter().any(|f| {
            word.strip_prefix(f)
                .and_then(|rest| rest.strip_prefix('='))
                .is_some_and(given)
        }) {
            1
        } else {
            i += 1;
            continue;
        };
        let mut after = out.clone();
        after.drain(i..i + taken);
        match crate::parse_run_args(&after) {
            Ok(a) if same(&a) && a.target == before.target && a.command == before.command => {
                (out, removed) = (after, true);
            }
            // A word of the command, or the value of another option.
            _ => i += 1,
        }
    }
    Ok((out, removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_option_of_a_recorded_run_is_set_in_place_of_what_it_was() {
        let words = |w: &str| -> Vec<String> { w.split(' ').map(String::from).collect() };
        let run = words("run -d --name db -m 256 --restart=no app -- app --memory 9 -m 1");
        let set = with_option(&run, &["--memory", "-m"], "512m").unwrap();
        assert_eq!(
            set,
            words("run --memory 512m -d --name db --restart=no app -- app --memory 9 -m 1")
        );
        let set = with_option(&set, &["--restart"], "always").unwrap();
        assert_eq!(
            set,
            words("run --restart always --memory 512m -d --name db app -- app --memory 9 -m 1")
        );
        // What a run cannot take is refused, as run would refuse it.
        let removed = words("run -d --rm app");
        let e = with_option(&removed, &["--restart"], "always").unwrap_err();
        assert!(e.to_string().starts_with("--restart always: "), "{e}");
    }

    #[test]
    fn label_files_are_read_into_the_recorded_run() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("labels");
        std::fs::write(&file, "# ours\na=1\nb=from file\n").unwrap();
        let file = file.to_str().unwrap().to_string();
        let run: Vec<String> = [
            "run",
            "-d",
            "--label-file",
            &file,
            "-l",
            "b=2",
            "app",
            "--",
            "x",
        ]
        .map(String::from)
        .to_vec();
        let read = with_label_files_read(&run).unwrap();
        assert_eq!(
            read,
            [
                "run",
                "--label",
                "a=1",
                "--label",
                "b=from file",
                "-d",
                "-l",
                "b=2",
                "app",
                "--",
                "x"
            ]
        );
        std::fs::remove_file(&file).unwrap();
        let args = crate::parse_run_args(&read).unwrap();
        assert!(args.label_file.is_empty());
        assert_eq!(
            super::super::labels(&args, None).unwrap(),
            [("a".into(), "1".into()), ("b".into(), "2".into())].into()
        );
    }

    #[test]
    fn a_recorded_run_is_put_on_a_network_and_taken_off_it_as_an_option_only() {
        let words = |w: &str| -> Vec<String> { w.split(' ').map(String::from).collect() };
        let run =
            words("run -d --name db --net none --net=backend -e A=1 app -- echo --net backend");
        let on = with_network(&run, "front", &["www".into()]).unwrap();
        assert_eq!(
            on,
            words(
                "run -d --name db --net none --net=backend --net front --network-alias www \
                 -e A=1 app -- echo --net backend"
            ),
            "joined after its other networks"
        );
        let off = without_network(&on, "backend").unwrap().unwrap();
        assert_eq!(
            off,
            words(
                "run -d --name db --net none --net front --network-alias www -e A=1 app \
                 -- echo --net backend"
            ),
            "the command's own words stay"
        );
        let off = without_network(&off, "front").unwrap().unwrap();
        assert_eq!(
            off,
            words(
                "run -d --name db --net none --network-alias www -e A=1 app -- echo --net backend"
            )
        );
        assert_eq!(
            without_network(&words("run --network backend app"), "backend").unwrap(),
            Some(words("run app"))
        );
        // Only the command names it: nothing to take away.
        assert_eq!(
            without_network(&words("run app -- echo --net backend"), "backend").unwrap(),
            None
        );
    }
}
