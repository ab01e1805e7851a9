//! A detached run's `HostConfig`, as `docker inspect` shows a
//! container's: read from the `husk run` command line its state keeps, so
//! it says what was asked for, with docker's zero values for what was not
//! (`Memory` 0 is "not given": the VM then has its appliance's memory).

use serde_json::{json, Map, Value};

use super::shares::Source;
use super::{Args, NetMode};

/// docker's names of the resource limits `--ulimit` takes.
const ULIMITS: [&str; 16] = [
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
    "as",
];

impl Args {
    /// Whether the run keeps a console log (`--log-driver none` does not).
    pub fn keeps_log(&self) -> bool {
        super::service::keeps_log(&self.service)
    }

    /// `-t`: docker inspect's `Config.Tty`.
    pub fn tty(&self) -> bool {
        self.tty
    }

    /// `-i`: docker inspect's `Config.OpenStdin`.
    pub fn interactive(&self) -> bool {
        self.interactive
    }

    /// `HostConfig` of `docker inspect`, from this command line; the
    /// restart policy is the state's (`husk update` changes it).
    pub fn host_config(&self, restart: Value) -> Value {
        let binds: Vec<String> = self
            .volumes
            .iter()
            .filter_map(|v| {
                let source = match &v.source {
                    Source::Folder(p) => p.display().to_string(),
                    Source::Volume(name) => name.clone(),
                    Source::Anonymous => return None,
                };
                let mut options = Vec::new();
                if v.readonly {
                    options.push("ro");
                }
                if v.nocopy {
                    options.push("nocopy");
                }
                Some(match options.is_empty() {
                    true => format!("{source}:{}", v.guest),
                    false => format!("{source}:{}:{}", v.guest, options.join(",")),
                })
            })
            .collect();
        let mut port_bindings = Map::new();
        for spec in self.publish.iter().flat_map(|p| &p.0) {
            let Some((host, guest)) = super::super::port::mapping(&super::net::published(spec))
            else {
                continue;
            };
            let (ip, port) = host.rsplit_once(':').unwrap_or(("", &host));
            let ip = if spec.host_ip.is_none() {
                ""
            } else {
                ip.trim_matches(['[', ']'])
            };
            let port = if spec.host_port == 0 { "" } else { port };
            let bound = json!({"HostIp": ip, "HostPort": port});
            if let Value::Array(a) = port_bindings.entry(guest).or_insert_with(|| json!([])) {
                a.push(bound);
            }
        }
        let network_mode = match self.net.first() {
            None | Some(NetMode::User) => "default".to_string(),
            Some(NetMode::None) => "none".to_string(),
            Some(NetMode::Network(name)) => name.clone(),
            Some(NetMode::Tap(_)) => "tap".to_string(),
        };
        let caps = |list: &[Option<caps::Capability>]| -> Vec<String> {
            list.iter()
                .map(|c| match c {
                    Some(c) => c.to_string().trim_start_matches("CAP_").to_string(),
                    None => "ALL".to_string(),
                })
                .collect()
        };
        let sysctls: Map<String, Value> = self
            .sysctl
            .iter()
            .filter_map(|s| s.split_once('='))
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect();
        let tmpfs: Map<String, Value> = self
            .tmpfs
            .iter()
            .map(|t| (t.path.clone(), t.options.clone().into()))
            .collect();
        let limit = |v: u64| -> Value {
            match v {
                libc::RLIM_INFINITY => (-1).into(),
                v => v.into(),
            }
        };
        let ulimits: Vec<Value> = self
            .ulimit
            .iter()
            .map(|r| {
                let name = ULIMITS.iter().find(|n| {
                    crate::oci::bundle::rlimit_number(&format!("RLIMIT_{}", n.to_uppercase()))
                        == Some(r.resource)
                });
                json!({"Name": name, "Soft": limit(r.soft), "Hard": limit(r.hard)})
            })
            .collect();
        let memory = self
            .memory
            .as_deref()
            .and_then(|m| super::super::memory_mib(m).ok())
            .map_or(0, |mib| mib << 20);
        let (dns, dns_search, dns_options, extra_hosts) = self.names.docker_fields();
        json!({
            "Binds": binds,
            "VolumesFrom": self.volumes_from,
            "Tmpfs": tmpfs,
            "NetworkMode": network_mode,
            "PortBindings": port_bindings,
            "PublishAllPorts": self.publish_all,
            "RestartPolicy": restart,
            "AutoRemove": self.rm,
            "Privileged": self.privileged,
            "ReadonlyRootfs": self.read_only,
            "Init": self.init,
            "CapAdd": caps(&self.cap_add),
            "CapDrop": caps(&self.cap_drop),
            "GroupAdd": self.group_add,
            "Dns": dns,
            "DnsSearch": dns_search,
            "DnsOptions": dns_options,
            "ExtraHosts": extra_hosts,
            "Memory": memory,
            "NanoCpus": self.cpus.map_or(0, |c| u64::from(c) * 1_000_000_000),
            "ShmSize": self.shm_size.unwrap_or(64 << 20),
            "Sysctls": sysctls,
            "Ulimits": ulimits,
            "LogConfig": super::service::log_config(&self.service),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_config(line: &[&str]) -> Value {
        let args: Vec<String> = line.iter().map(|s| s.to_string()).collect();
        crate::parse_run_args(&args)
            .unwrap()
            .host_config(json!({"Name": "no"}))
    }

    #[test]
    fn host_config_says_what_the_command_line_asked_for_as_docker_writes_it() {
        let c = host_config(&[
            "run",
            "-d",
            "-v",
            "/srv/data:/data:ro",
            "-v",
            "cache:/cache",
            "-v",
            "/anon",
            "-p",
            "127.0.0.1:8080:80",
            "-p",
            "53:53/udp",
            "--net",
            "none",
            "--cap-add",
            "net_admin",
            "--cap-drop",
            "ALL",
            "--group-add",
            "wheel",
            "--dns",
            "10.0.0.53",
            "--dns-search",
            "example.org",
            "--add-host",
            "db:10.0.0.5",
            "-m",
            "256m",
            "--cpus",
            "2",
            "--ulimit",
            "nofile=1024:-1",
            "--sysctl",
            "net.core.somaxconn=1024",
            "--tmpfs",
            "/run:size=1m",
            "--read-only",
            "--rm",
            "--log-driver",
            "local",
            "--log-opt",
            "max-size=10m",
            "examples/web",
        ]);
        assert_eq!(c["Binds"], json!(["/srv/data:/data:ro", "cache:/cache"]));
        assert_eq!(
            c["PortBindings"],
            json!({
                "80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}],
                "53/udp": [{"HostIp": "", "HostPort": "53"}],
            })
        );
        assert_eq!(c["NetworkMode"], "none");
        assert_eq!(c["CapAdd"], json!(["NET_ADMIN"]));
        assert_eq!(c["CapDrop"], json!(["ALL"]));
        assert_eq!(c["GroupAdd"], json!(["wheel"]));
        assert_eq!(c["Dns"], json!(["10.0.0.53"]));
        assert_eq!(c["DnsSearch"], json!(["example.org"]));
        assert_eq!(c["ExtraHosts"], json!(["db:10.0.0.5"]));
        assert_eq!(c["Memory"], 256 << 20);
        assert_eq!(c["NanoCpus"], 2_000_000_000u64);
        assert_eq!(
            c["Ulimits"],
            json!([{"Name": "nofile", "Soft": 1024, "Hard": -1}])
        );
        assert_eq!(c["Sysctls"], json!({"net.core.somaxconn": "1024"}));
        assert_eq!(c["Tmpfs"], json!({"/run": "size=1m"}));
        assert_eq!(c["ReadonlyRootfs"], true);
        assert_eq!(c["AutoRemove"], true);
        assert_eq!(
            c["LogConfig"],
            json!({"Type": "local", "Config": {"max-size": "10m"}})
        );
        assert_eq!(c["RestartPolicy"], json!({"Name": "no"}));

        // Nothing asked: docker's zero values.
        let c = host_config(&["run", "-d", "examples/web"]);
        assert_eq!(c["Binds"], json!([]));
        assert_eq!(c["NetworkMode"], "default");
        assert_eq!(
            (c["Memory"].clone(), c["NanoCpus"].clone()),
            (json!(0), json!(0))
        );
        assert_eq!(c["ShmSize"], 64 << 20);
        assert_eq!(c["LogConfig"], json!({"Type": "json-file", "Config": {}}));
        assert_eq!(c["ExtraHosts"], json!([]));
    }
}
