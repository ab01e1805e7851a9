//! A pod's container has a cgroup of its own in the guest: its spec's
//! `linux.resources` become that cgroup's limits
//! ([`crate::oci::resources::of_spec`]), `Update` sets new ones
//! ([`update`]), and `Stats` answers with its
//! figures as containerd's cgroup v2 metrics ([`metrics`]), which
//! containerd's CRI plugin turns into the kubelet's container stats.

use std::collections::BTreeMap;

use anyhow::Context as _;
use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::MessageField;
use oci_spec::runtime::LinuxResources;

/// The new limits of an `UpdateTaskRequest`: containerd sends the OCI
/// `LinuxResources` as JSON in an `Any`.
pub fn update(any: &Any) -> anyhow::Result<agent::Resources> {
    if !any.type_url.ends_with("LinuxResources") {
        anyhow::bail!(
            "an update of {:?}: only a container's linux resources can be updated",
            any.type_url
        );
    }
    let r: LinuxResources = serde_json::from_slice(&any.value)
        .context("the update's resources are not OCI linux resources")?;
    Ok(crate::oci::resources::of(&r))
}

/// The guest's figures as containerd's `io.containerd.cgroups.v2.Metrics`,
/// packed as containerd's runc shim packs them.
pub fn metrics(s: &agent::CgroupStats) -> anyhow::Result<Any> {
    let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    let ms = &s.memory_stat;
    let memory = MemoryStat {
        anon: get(ms, "anon"),
        file: get(ms, "file"),
        kernel_stack: get(ms, "kernel_stack"),
        slab: get(ms, "slab"),
        sock: get(ms, "sock"),
        shmem: get(ms, "shmem"),
        file_mapped: get(ms, "file_mapped"),
        file_dirty: get(ms, "file_dirty"),
        file_writeback: get(ms, "file_writeback"),
        anon_thp: get(ms, "anon_thp"),
        inactive_anon: get(ms, "inactive_anon"),
        active_anon: get(ms, "active_anon"),
        inactive_file: get(ms, "inactive_file"),
        active_file: get(ms, "active_file"),
        unevictable: get(ms, "unevictable"),
        slab_reclaimable: get(ms, "slab_reclaimable"),
        slab_unreclaimable: get(ms, "slab_unreclaimable"),
        pgfault: get(ms, "pgfault"),
        pgmajfault: get(ms, "pgmajfault"),
        workingset_refault: get(ms, "workingset_refault_anon") + get(ms, "workingset_refault_file"),
        workingset_activate: get(ms, "workingset_activate_anon")
            + get(ms, "workingset_activate_file"),
        workingset_nodereclaim: get(ms, "workingset_nodereclaim"),
        pgrefill: get(ms, "pgrefill"),
        pgscan: get(ms, "pgscan"),
        pgsteal: get(ms, "pgsteal"),
        pgactivate: get(ms, "pgactivate"),
        pgdeactivate: get(ms, "pgdeactivate"),
        pglazyfree: get(ms, "pglazyfree"),
        pglazyfreed: get(ms, "pglazyfreed"),
        thp_fault_alloc: get(ms, "thp_fault_alloc"),
        thp_collapse_alloc: get(ms, "thp_collapse_alloc"),
        usage: s.memory_current,
        // "max" as containerd's cgroups library reads it.
        usage_limit: s.memory_max.unwrap_or(u64::MAX),
        max_usage: s.memory_peak.unwrap_or(0),
        ..Default::default()
    };
    let cs = &s.cpu_stat;
    let cpu = CPUStat {
        usage_usec: get(cs, "usage_usec"),
        user_usec: get(cs, "user_usec"),
        system_usec: get(cs, "system_usec"),
        nr_periods: get(cs, "nr_periods"),
        nr_throttled: get(cs, "nr_throttled"),
        throttled_usec: get(cs, "throttled_usec"),
        nr_bursts: get(cs, "nr_bursts"),
        burst_usec: get(cs, "burst_usec"),
        ..Default::default()
    };
    let me = &s.memory_events;
    let events = MemoryEvents {
        low: get(me, "low"),
        high: get(me, "high"),
        max: get(me, "max"),
        oom: get(me, "oom"),
        oom_kill: get(me, "oom_kill"),
        oom_group_kill: get(me, "oom_group_kill"),
        ..Default::default()
    };
    let pids = PidsStat {
        current: s.pids_current,
        limit: s.pids_max.unwrap_or(0),
        ..Default::default()
    };
    let m = Metrics {
        pids: MessageField::some(pids),
        cpu: MessageField::some(cpu),
        memory: MessageField::some(memory),
        memory_events: MessageField::some(events),
        ..Default::default()
    };
    containerd_shim::util::convert_to_any(Box::new(m)).context("cannot encode the metrics")
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::Message;

    #[test]
    fn an_update_reads_containerds_json_and_refuses_other_types() {
        let any = Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: br#"{"memory":{"limit":134217728},"cpu":{"quota":20000,"period":100000}}"#
                .to_vec(),
            ..Default::default()
        };
        let r = update(&any).unwrap();
        assert_eq!(r.memory_max, Some(128 << 20));
        assert_eq!(r.cpu_quota, Some(20_000));
        let other = Any {
            type_url: "types.containerd.io/something/Else".into(),
            ..Default::default()
        };
        assert!(update(&other).is_err());
        let bad = Any {
            value: b"{".to_vec(),
            ..any
        };
        assert!(update(&bad).is_err());
    }

    #[test]
    fn figures_map_onto_containerds_v2_metrics() {
        let s = agent::CgroupStats {
            memory_current: 5 << 20,
            memory_max: None,
            memory_peak: None,
            memory_stat: [
                ("anon".to_string(), 1 << 20),
                ("inactive_file".to_string(), 2 << 20),
                ("workingset_refault_anon".to_string(), 3),
                ("workingset_refault_file".to_string(), 4),
            ]
            .into(),
            memory_events: [("oom_kill".to_string(), 1)].into(),
            cpu_stat: [
                ("usage_usec".to_string(), 777),
                ("user_usec".to_string(), 500),
            ]
            .into(),
            pids_current: 3,
            pids_max: Some(100),
        };
        let any = metrics(&s).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.memory.usage, 5 << 20);
        assert_eq!(m.memory.usage_limit, u64::MAX);
        assert_eq!(m.memory.anon, 1 << 20);
        assert_eq!(m.memory.inactive_file, 2 << 20);
        assert_eq!(m.memory.workingset_refault, 7);
        assert_eq!(m.memory_events.oom_kill, 1);
        assert_eq!(m.cpu.usage_usec, 777);
        assert_eq!(m.cpu.user_usec, 500);
        assert_eq!((m.pids.current, m.pids.limit), (3, 100));
    }
}
