//! A container's `linux.resources` as the limits of its cgroup in the
//! guest (cgroup v2): at create ([`of_spec`], husk-runtime's and the
//! shim's), at `update` ([`update`], what a micro-VM can honour), and its
//! figures as runc's `events` prints them ([`stats_event`]).

use std::collections::BTreeMap;

use oci_spec::runtime::{LinuxResources, Spec};

/// The cgroup limits `linux.resources` of `spec` sets.
pub fn of_spec(spec: &Spec) -> agent::Resources {
    spec.linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .map(of)
        .unwrap_or_default()
}

/// What `linux.resources` sets that a cgroup v2 takes (memory, CPU quota
/// and shares, process count); runc's rules for values that mean "none".
pub fn of(r: &LinuxResources) -> agent::Resources {
    let positive = |v: Option<i64>| v.filter(|v| *v > 0).map(|v| v as u64);
    let cpu = r.cpu().as_ref();
    agent::Resources {
        memory_max: positive(r.memory().as_ref().and_then(|m| m.limit())),
        cpu_quota: positive(cpu.and_then(|c| c.quota())),
        cpu_period: cpu.and_then(|c| c.period()).filter(|p| *p > 0),
        cpu_weight: cpu.and_then(|c| c.shares()).filter(|s| *s > 0).map(weight),
        pids_max: positive(r.pids().as_ref().map(|p| p.limit())),
    }
}

/// cgroup v1's CPU shares (2 to 262,144) as cgroup v2's weight (1 to
/// 10,000), the conversion runc and crun make.
fn weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9_999) / 262_142
}

/// The size of a container's VM, fixed when it boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmSize {
    pub cpus: u32,
    pub memory_mib: u64,
}

/// The changes `runc update --resources` asks, as runc reads them (0 or
/// absent: unchanged; -1: no limit), for a container whose VM is `vm`.
/// What a micro-VM cannot honour is an error naming it: a limit beyond
/// the VM's memory or vCPUs, host CPUs or memory nodes to pin to, host
/// block devices to throttle, huge pages, network classes, RDMA. What
/// holds in a VM by itself is taken as it is: a swap limit (the guest has
/// no swap), a memory reservation (the VM's memory is the container's
/// alone), cgroup v1's kernel memory limits (runc ignores them on v2),
/// device rules (the guest's devices are the VM's own).
pub fn update(r: &LinuxResources, vm: VmSize) -> anyhow::Result<agent::Resources> {
    let limit = |v: Option<i64>| match v {
        Some(-1) => Some(agent::NO_LIMIT),
        Some(v) if v > 0 => Some(v as u64),
        _ => None,
    };
    let mut out = agent::Resources::default();
    if let Some(m) = r.memory() {
        out.memory_max = limit(m.limit());
        if let Some(max) = out.memory_max.filter(|m| *m != agent::NO_LIMIT) {
            if max > vm.memory_mib << 20 {
                anyhow::bail!(
                    "a memory limit of {} MiB cannot be honoured: the container's VM has {} MiB, \
                     fixed when it boots",
                    max.div_ceil(1 << 20),
                    vm.memory_mib
                );
            }
        }
    }
    if let Some(c) = r.cpu() {
        out.cpu_quota = limit(c.quota());
        out.cpu_period = c.period().filter(|p| *p > 0);
        out.cpu_weight = c.shares().filter(|s| *s > 0).map(weight);
        if let Some(quota) = out.cpu_quota.filter(|q| *q != agent::NO_LIMIT) {
            let period = out.cpu_period.unwrap_or(100_000);
            if quota > u64::from(vm.cpus) * period {
                anyhow::bail!(
                    "a CPU quota of {quota} µs per {period} µs cannot be honoured: the \
                     container's VM has {} vCPU(s), fixed when it boots",
                    vm.cpus
                );
            }
        }
        let pinned = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        if pinned(c.cpus()) || pinned(c.mems()) {
            anyhow::bail!(
                "cpuset cpus and mems cannot be honoured: the container runs on its VM's vCPUs, \
                 not on host CPUs"
            );
        }
        if c.realtime_runtime().is_some_and(|v| v > 0) || c.realtime_period().is_some_and(|v| v > 0)
        {
            anyhow::bail!("real-time CPU time cannot be honoured in a micro-VM");
        }
    }
    if let Some(p) = r.pids() {
        out.pids_max = limit(Some(p.limit()));
    }
    if let Some(b) = r.block_io() {
        let weighted = b.weight().is_some_and(|w| w > 0)
            || b.leaf_weight().is_some_and(|w| w > 0)
            || set(b.weight_device());
        let throttled = set(b.throttle_read_bps_device())
            || set(b.throttle_write_bps_device())
            || set(b.throttle_read_iops_device())
            || set(b.throttle_write_iops_device());
        if weighted || throttled {
            anyhow::bail!(
                "block I/O weights and throttles cannot be honoured: the container's disk is its \
                 VM's, not a host device"
            );
        }
    }
    if set(r.hugepage_limits()) {
        anyhow::bail!("huge page limits cannot be honoured: the guest has no huge pages");
    }
    if r.network().is_some() {
        anyhow::bail!("network class and priorities cannot be honoured in a micro-VM");
    }
    if r.rdma().as_ref().is_some_and(|m| !m.is_empty()) {
        anyhow::bail!("RDMA limits cannot be honoured: the guest has no RDMA devices");
    }
    Ok(out)
}

/// A list given and not empty.
fn set<T>(list: &Option<Vec<T>>) -> bool {
    list.as_ref().is_some_and(|l| !l.is_empty())
}

/// Container `id`'s cgroup figures as one line of `runc events`: the
/// `stats` event, its data in runc's `types.Stats` shape (times in
/// nanoseconds).
pub fn stats_event(id: &str, s: &agent::CgroupStats) -> serde_json::Value {
    let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    let cs = &s.cpu_stat;
    let ms = &s.memory_stat;
    serde_json::json!({
        "type": "stats",
        "id": id,
        "data": {
            "cpu": {
                "usage": {
                    "total": get(cs, "usage_usec") * 1000,
                    "kernel": get(cs, "system_usec") * 1000,
                    "user": get(cs, "user_usec") * 1000,
                },
                "throttling": {
                    "periods": get(cs, "nr_periods"),
                    "throttledPeriods": get(cs, "nr_throttled"),
                    "throttledTime": get(cs, "throttled_usec") * 1000,
                },
            },
            "memory": {
                "cache": get(ms, "file"),
                "usage": {
                    "usage": s.memory_current,
                    "max": s.memory_peak.unwrap_or(0),
                    "limit": s.memory_max.unwrap_or(u64::MAX),
                    "failcnt": get(&s.memory_events, "max"),
                },
                "raw": ms,
            },
            "pids": {
                "current": s.pids_current,
                "limit": s.pids_max.unwrap_or(0),
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(json: serde_json::Value) -> LinuxResources {
        serde_json::from_value(json).unwrap()
    }

    const VM: VmSize = VmSize {
        cpus: 2,
        memory_mib: 288,
    };

    #[test]
    fn a_specs_resources_become_cgroup_v2_limits() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": { "resources": {
                "memory": { "limit": 67108864 },
                "cpu": { "quota": 50000, "period": 100000, "shares": 1024 },
                "pids": { "limit": 100 }
            }}
        }))
        .unwrap();
        assert_eq!(
            of_spec(&spec),
            agent::Resources {
                memory_max: Some(64 << 20),
                cpu_quota: Some(50_000),
                cpu_period: Some(100_000),
                cpu_weight: Some(39),
                pids_max: Some(100),
            }
        );
        // runc's "no limit" values set nothing.
        let none = resources(serde_json::json!({
            "memory": { "limit": -1 },
            "cpu": { "quota": -1, "shares": 0 },
            "pids": { "limit": 0 }
        }));
        assert!(of(&none).is_empty());
        assert_eq!(weight(2), 1);
        assert_eq!(weight(262_144), 10_000);
    }

    #[test]
    fn an_update_as_docker_sends_it_changes_what_is_set() {
        // docker 20.10 sends every field, zeros for what it leaves.
        let r = resources(serde_json::json!({
            "memory": { "limit": 134217728, "reservation": 0, "kernel": 0, "swap": 268435456 },
            "cpu": { "shares": 0, "quota": 50000, "period": 100000, "cpus": "", "mems": "",
                     "realtimeRuntime": 0, "realtimePeriod": 0 },
            "pids": { "limit": 0 },
            "devices": [{ "allow": false, "access": "rwm" }]
        }));
        assert_eq!(
            update(&r, VM).unwrap(),
            agent::Resources {
                memory_max: Some(128 << 20),
                cpu_quota: Some(50_000),
                cpu_period: Some(100_000),
                cpu_weight: None,
                pids_max: None,
            }
        );
        // -1 lifts a limit.
        let lift = resources(serde_json::json!({
            "memory": { "limit": -1 }, "cpu": { "quota": -1 }, "pids": { "limit": -1 }
        }));
        let u = update(&lift, VM).unwrap();
        assert_eq!(u.memory_max, Some(agent::NO_LIMIT));
        assert_eq!(u.cpu_quota, Some(agent::NO_LIMIT));
        assert_eq!(u.pids_max, Some(agent::NO_LIMIT));
        assert!(update(&resources(serde_json::json!({})), VM)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn what_a_vm_cannot_honour_is_refused_with_the_reason() {
        let cases = [
            (
                serde_json::json!({ "memory": { "limit": 1i64 << 30 } }),
                "has 288 MiB",
            ),
            (
                serde_json::json!({ "cpu": { "quota": 300000, "period": 100000 } }),
                "2 vCPU",
            ),
            (serde_json::json!({ "cpu": { "cpus": "0-1" } }), "cpuset"),
            (
                serde_json::json!({ "cpu": { "realtimeRuntime": 950000 } }),
                "real-time",
            ),
            (
                serde_json::json!({ "blockIO": { "weight": 500 } }),
                "block I/O",
            ),
            (
                serde_json::json!({ "blockIO": { "throttleReadBpsDevice":
                    [{ "major": 8, "minor": 0, "rate": 1048576 }] } }),
                "block I/O",
            ),
            (
                serde_json::json!({ "hugepageLimits": [{ "pageSize": "2MB", "limit": 0 }] }),
                "huge page",
            ),
            (
                serde_json::json!({ "network": { "classID": 1 } }),
                "network",
            ),
        ];
        for (json, needle) in cases {
            let e = update(&resources(json.clone()), VM)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{json}: {e}");
        }
        // At the VM's size exactly is honoured.
        let full = resources(serde_json::json!({
            "memory": { "limit": 288i64 << 20 }, "cpu": { "quota": 200000, "period": 100000 }
        }));
        assert!(update(&full, VM).is_ok());
    }

    #[test]
    fn stats_are_runcs_event_shape() {
        let s = agent::CgroupStats {
            memory_current: 5 << 20,
            memory_max: Some(64 << 20),
            memory_peak: None,
            memory_stat: [("file".to_string(), 4096), ("anon".to_string(), 8192)].into(),
            memory_events: [("max".to_string(), 2)].into(),
            cpu_stat: [
                ("usage_usec".to_string(), 7),
                ("user_usec".to_string(), 5),
                ("system_usec".to_string(), 2),
            ]
            .into(),
            pids_current: 3,
            pids_max: None,
        };
        let e = stats_event("c1", &s);
        assert_eq!(e["type"], "stats");
        assert_eq!(e["id"], "c1");
        let d = &e["data"];
        assert_eq!(d["cpu"]["usage"]["total"], 7000);
        assert_eq!(d["cpu"]["usage"]["kernel"], 2000);
        assert_eq!(d["memory"]["usage"]["usage"], 5 << 20);
        assert_eq!(d["memory"]["usage"]["limit"], 64 << 20);
        assert_eq!(d["memory"]["usage"]["failcnt"], 2);
        assert_eq!(d["memory"]["cache"], 4096);
        assert_eq!(d["memory"]["raw"]["anon"], 8192);
        assert_eq!(d["pids"]["current"], 3);
        assert_eq!(d["pids"]["limit"], 0);
    }
}
