//! Malformed appliance files, each checked for where the error is placed
//! (line:column and field path) and what it says.

use std::path::Path;

use appliance_spec::{Appliance, SpecError};

/// Minimal valid head every case starts from, unless it replaces it.
const HEAD: &str = "[appliance]\nname = \"app\"\n";

struct Case {
    name: &'static str,
    toml: &'static str,
    /// `line:column: field: message-substring` of the first diagnostic.
    line: usize,
    column: usize,
    field: &'static str,
    says: &'static str,
}

const fn case(
    name: &'static str,
    toml: &'static str,
    line: usize,
    column: usize,
    field: &'static str,
    says: &'static str,
) -> Case {
    Case {
        name,
        toml,
        line,
        column,
        field,
        says,
    }
}

/// `HEAD` is prepended to every case text that does not start with `!`;
/// lines below count from the first line of the whole file.
const CASES: &[Case] = &[
    case("memory not a size", "[vm]\nmemory = \"12x\"\n[run]\ncommand = [\"/a\"]\n",
        4, 10, "vm.memory", "\"12x\" is not a size; write e.g. \"128MiB\""),
    case("unknown key with suggestion", "[vm]\nmemroy = \"1G\"\n",
        4, 1, "vm.memroy", "unknown key \"memroy\"; did you mean \"memory\"?"),
    case("unknown key no close match", "[run]\ncommand = [\"/a\"]\nzebra = 1\n",
        5, 1, "run.zebra", "unknown key \"zebra\"; expected one of: command, env, workdir, user, hostname"),
    case("unknown table", "[vmm]\ncpus = 1\n",
        3, 2, "vmm", "did you mean \"vm\"?"),
    case("missing appliance table", "![run]\ncommand = [\"/a\"]\n",
        1, 1, "appliance", "required but missing; add a [appliance] table"),
    case("missing name", "![appliance]\nversion = \"1\"\n",
        1, 1, "appliance.name", "required but missing; add name = ..."),
    case("bad name", "![appliance]\nname = \"My_App\"\n[run]\ncommand = [\"/a\"]\n",
        2, 8, "appliance.name", "\"My_App\" is not a valid name"),
    case("scratch without command", "[run]\nworkdir = \"/\"\n",
        3, 1, "run.command", "required when rootfs.from is \"scratch\""),
    case("empty command", "[run]\ncommand = []\n",
        4, 11, "run.command", "must name a program"),
    case("cpus too many", "[run]\ncommand = [\"/a\"]\n[vm]\ncpus = 64\n",
        6, 8, "vm.cpus", "64 is out of range; husk runs 1 to 32 vCPUs"),
    case("cpus zero", "[run]\ncommand = [\"/a\"]\n[vm]\ncpus = 0\n",
        6, 8, "vm.cpus", "0 is out of range"),
    case("cpus wrong type", "[run]\ncommand = [\"/a\"]\n[vm]\ncpus = \"two\"\n",
        6, 8, "vm.cpus", "invalid type: string \"two\", expected u32"),
    case("memory too small", "[run]\ncommand = [\"/a\"]\n[vm]\nmemory = \"16MiB\"\n",
        6, 10, "vm.memory", "16MiB is too small; a guest needs at least 32MiB"),
    case("mode not octal", "[run]\ncommand = [\"/a\"]\n[[rootfs.files]]\ncontent = \"x\"\ndst = \"/a\"\nmode = \"0789\"\n",
        8, 8, "rootfs.files[0].mode", "\"0789\" is not a file mode; write an octal string"),
    case("mode as number", "[run]\ncommand = [\"/a\"]\n[[rootfs.dirs]]\npath = \"/d\"\nmode = 755\n",
        7, 8, "rootfs.dirs[0].mode", "755 is a number; write the mode as an octal string"),
    case("relative dst", "[run]\ncommand = [\"/a\"]\n[[rootfs.files]]\ncontent = \"x\"\ndst = \"etc/x\"\n",
        7, 7, "rootfs.files[0].dst", "\"etc/x\" is not an absolute path; write e.g. \"/etc/x\""),
    case("dotdot in path", "[run]\ncommand = [\"/a\"]\n[[rootfs.symlinks]]\npath = \"/a/../../etc\"\ntarget = \"x\"\n",
        6, 8, "rootfs.symlinks[0].path", "contains \"..\""),
    case("duplicate destination", "[run]\ncommand = [\"/a\"]\n[[rootfs.files]]\ncontent = \"x\"\ndst = \"/etc/x\"\n[[rootfs.dirs]]\npath = \"/etc//x\"\n",
        9, 8, "rootfs.dirs[0].path", "/etc/x is already given at rootfs.files[0].dst"),
    case("src does not exist", "[run]\ncommand = [\"/a\"]\n[[rootfs.files]]\nsrc = \"no-such-file\"\ndst = \"/x\"\n",
        6, 7, "rootfs.files[0].src", "no-such-file does not exist"),
    case("src and content", "[run]\ncommand = [\"/a\"]\n[[rootfs.files]]\nsrc = \"appliance.toml\"\ncontent = \"x\"\ndst = \"/x\"\n",
        7, 11, "rootfs.files[0].content", "give either src or content, not both"),
    case("neither src nor content", "[run]\ncommand = [\"/a\"]\n[[rootfs.files]]\ndst = \"/x\"\n",
        5, 1, "rootfs.files[0].src", "required; give src"),
    case("bad env key", "[run]\ncommand = [\"/a\"]\nenv = { \"1BAD\" = \"v\" }\n",
        5, 18, "run.env.1BAD", "\"1BAD\" is not a valid variable name"),
    case("bad mac", "[run]\ncommand = [\"/a\"]\n[[vm.net]]\ntap = \"tap0\"\nmac = \"52:54:00:zz:34:56\"\n",
        7, 7, "vm.net[0].mac", "is not a MAC address; write e.g. \"52:54:00:12:34:56\""),
    case("multicast mac", "[run]\ncommand = [\"/a\"]\n[[vm.net]]\ntap = \"tap0\"\nmac = \"01:54:00:12:34:56\"\n",
        7, 7, "vm.net[0].mac", "is a multicast address"),
    case("bad cidr", "[run]\ncommand = [\"/a\"]\n[[vm.net]]\ntap = \"tap0\"\naddress = \"172.16.0.2\"\n",
        7, 11, "vm.net[0].address", "is not an address with prefix; write e.g. \"172.16.0.2/24\""),
    case("cidr prefix too long", "[run]\ncommand = [\"/a\"]\n[[vm.net]]\ntap = \"tap0\"\naddress = \"10.0.0.2/40\"\n",
        7, 11, "vm.net[0].address", "prefix /40 is longer than 32"),
    case("gateway without address", "[run]\ncommand = [\"/a\"]\n[[vm.net]]\ntap = \"tap0\"\ngateway = \"10.0.0.1\"\n",
        7, 11, "vm.net[0].gateway", "needs an address"),
    case("bad published port", "[run]\ncommand = [\"/a\"]\n[[vm.net]]\nports = [\"8080:http\"]\n",
        6, 10, "vm.net[0].ports[0]", "is not a published port; write HOST_PORT:GUEST_PORT"),
    case("port 0", "[run]\ncommand = [\"/a\"]\n[[vm.net]]\nports = [\"0:80\"]\n",
        6, 10, "vm.net[0].ports[0]", "port 0 cannot be published"),
    case("ports on a tap", "[run]\ncommand = [\"/a\"]\n[[vm.net]]\ntap = \"tap0\"\nports = [\"8080:80\"]\n",
        7, 9, "vm.net[0].ports", "ports are published by the user-mode network"),
    case("port published twice", "[run]\ncommand = [\"/a\"]\n[[vm.net]]\nports = [\"8080:80\", \"8080:81\"]\n",
        6, 21, "vm.net[0].ports[1]", "host port 8080 is already published by ports[0]"),
    case("two user-mode interfaces", "[run]\ncommand = [\"/a\"]\n[[vm.net]]\nmtu = 1500\n[[vm.net]]\nmtu = 1400\n",
        7, 1, "vm.net[1]", "only one interface can be on the user-mode network"),
    case("a network by a --net word", "[run]\ncommand = [\"/a\"]\n[[vm.net]]\nnetwork = \"none\"\n",
        6, 11, "vm.net[0].network", "\"none\" is not a network name"),
    case("a network with ports", "[run]\ncommand = [\"/a\"]\n[[vm.net]]\nnetwork = \"b\"\nports = [\"80\"]\n",
        7, 9, "vm.net[0].ports", "a network gives its members their addresses"),
    case("a network with an IPv6 address", "[run]\ncommand = [\"/a\"]\n[[vm.net]]\nnetwork = \"b\"\naddress = \"fd00::5/64\"\n",
        7, 11, "vm.net[0].address", "or one fixed IPv4 address"),
    case("a network joined twice", "[run]\ncommand = [\"/a\"]\n[[vm.net]]\nnetwork = \"b\"\n[[vm.net]]\nnetwork = \"b\"\n",
        8, 11, "vm.net[1].network", "network \"b\" is already joined by vm.net[0]"),
    case("mtu too small", "[run]\ncommand = [\"/a\"]\n[[vm.net]]\nmtu = 20\n",
        6, 7, "vm.net[0].mtu", "20 is not an MTU husk can give"),
    case("tap name too long", "[run]\ncommand = [\"/a\"]\n[[vm.net]]\ntap = \"a-very-long-tap-name\"\n",
        6, 7, "vm.net[0].tap", "is not an interface name"),
    case("bad source", "[rootfs]\nfrom = \"ubuntu:22.04\"\n",
        4, 8, "rootfs.from", "\"ubuntu:22.04\" is not a rootfs source"),
    case("missing oci archive", "[rootfs]\nfrom = \"oci-archive:missing.tar\"\n",
        4, 8, "rootfs.from", "missing.tar does not exist"),
    case("unknown format", "[rootfs]\nformat = \"ext3\"\n[run]\ncommand = [\"/a\"]\n",
        4, 10, "rootfs.format", "\"ext3\" is not one of: ext4, initramfs"),
    case("initramfs with size", "[rootfs]\nformat = \"initramfs\"\nsize = \"64MiB\"\n[run]\ncommand = [\"/a\"]\n",
        5, 8, "rootfs.size", "an initramfs has no fixed size"),
    case("vsock reserved cid", "[run]\ncommand = [\"/a\"]\n[vm.vsock]\ncid = 2\nuds = \"/tmp/v.sock\"\n",
        6, 7, "vm.vsock.cid", "2 is reserved"),
    case("bad user", "[run]\ncommand = [\"/a\"]\nuser = \"Bad User\"\n",
        5, 8, "run.user", "\"Bad User\" is not a user"),
    case("unknown on_exit", "[run]\ncommand = [\"/a\"]\non_exit = \"reboot\"\n",
        5, 11, "run.on_exit", "\"reboot\" is not one of: poweroff, restart"),
    case("bad hostname", "[run]\ncommand = [\"/a\"]\nhostname = \"-x\"\n",
        5, 12, "run.hostname", "\"-x\" is not a hostname"),
    case("two readiness checks", "[run]\ncommand = [\"/a\"]\n[run.ready]\ntcp = 80\ncommand = [\"/b\"]\n",
        5, 1, "run.ready", "give one check"),
    case("readiness timeout zero", "[run]\ncommand = [\"/a\"]\n[run.ready]\ntcp = 80\ntimeout = 0\n",
        7, 11, "run.ready.timeout", "0 s: give 1 to 3600 seconds"),
    case("health without a check", "[run]\ncommand = [\"/a\"]\n[run.health]\ninterval = 5\n",
        5, 1, "run.health", "give one check"),
    case("health with no program", "[run]\ncommand = [\"/a\"]\n[run.health]\ncommand = [\"\"]\n",
        6, 11, "run.health.command", "must name a program"),
    case("health interval zero", "[run]\ncommand = [\"/a\"]\n[run.health]\ntcp = 80\ninterval = 0\n",
        7, 12, "run.health.interval", "0 s: give 1 to 86400 seconds"),
    case("health retries zero", "[run]\ncommand = [\"/a\"]\n[run.health]\ntcp = 80\nretries = 0\n",
        7, 11, "run.health.retries", "0: give 1 to 100"),
    case("exposed port zero", "[run]\ncommand = [\"/a\"]\nexpose = [80, 0]\n",
        5, 15, "run.expose[1]", "0 is not a port: give 1 to 65535"),
    case("exposed port of another protocol", "[run]\ncommand = [\"/a\"]\nexpose = [\"80/sctp\"]\n",
        5, 11, "run.expose[0]", "\"80/sctp\" is not a port"),
    case("unknown stop signal", "[run]\ncommand = [\"/a\"]\nstop_signal = \"SIGNOPE\"\n",
        5, 15, "run.stop_signal", "\"SIGNOPE\" is not a signal"),
    case("missing kernel file", "[run]\ncommand = [\"/a\"]\n[vm]\nkernel = \"vmlinux-nope\"\n",
        6, 10, "vm.kernel", "vmlinux-nope does not exist"),
    case("share folder missing", "[run]\ncommand = [\"/a\"]\n[[vm.shares]]\nhost = \"nope\"\nguest = \"/data\"\n",
        6, 8, "vm.shares[0].host", "nope does not exist"),
    case("share guest relative", "[run]\ncommand = [\"/a\"]\n[[vm.shares]]\nhost = \".\"\nguest = \"data\"\n",
        7, 9, "vm.shares[0].guest", "is not an absolute path"),
    case("share onto root", "[run]\ncommand = [\"/a\"]\n[[vm.shares]]\nhost = \".\"\nguest = \"/\"\n",
        7, 9, "vm.shares[0].guest", "cannot share onto \"/\""),
    case("share guest twice", "[run]\ncommand = [\"/a\"]\n[[vm.shares]]\nhost = \".\"\nguest = \"/d\"\n[[vm.shares]]\nhost = \".\"\nguest = \"/d/\"\n",
        10, 9, "vm.shares[1].guest", "/d is already shared at vm.shares[0].guest"),
    case("share unknown key", "[run]\ncommand = [\"/a\"]\n[[vm.shares]]\nhost = \".\"\nguest = \"/d\"\nro = true\n",
        8, 1, "vm.shares[0].ro", "expected one of: host, volume, guest, readonly"),
    case("share of nothing", "[run]\ncommand = [\"/a\"]\n[[vm.shares]]\nguest = \"/d\"\n",
        5, 1, "vm.shares[0]", "give the host folder"),
    case("share of folder and volume", "[run]\ncommand = [\"/a\"]\n[[vm.shares]]\nhost = \".\"\nvolume = \"db\"\nguest = \"/d\"\n",
        7, 10, "vm.shares[0].volume", "not both"),
    case("share of a bad volume name", "[run]\ncommand = [\"/a\"]\n[[vm.shares]]\nvolume = \"x/y\"\nguest = \"/d\"\n",
        6, 10, "vm.shares[0].volume", "\"x/y\" is not a volume name"),
    case("folder root missing", "[rootfs]\nfrom = \"dir:no-such-folder\"\n[run]\ncommand = [\"/a\"]\n",
        4, 8, "rootfs.from", "no-such-folder does not exist"),
    case("folder root with files", "[rootfs]\nfrom = \"dir:.\"\n[[rootfs.files]]\ndst = \"/a\"\ncontent = \"x\"\n[run]\ncommand = [\"/a\"]\n",
        5, 1, "rootfs.files", "is booted as it is"),
    case("folder root without command", "[rootfs]\nfrom = \"dir:.\"\n",
        1, 1, "run.command", "or a folder"),
    case("toml syntax error", "[vm\ncpus = 1\n",
        3, 4, "", "unclosed table, expected `]`"),
    case("duplicate key", "[vm]\ncpus = 1\ncpus = 2\n",
        5, 1, "", "duplicate key"),
];

fn run_case(dir: &Path, c: &Case) -> SpecError {
    let text = match c.toml.strip_prefix('!') {
        Some(raw) => raw.to_string(),
        None => format!("{HEAD}{}", c.toml),
    };
    let file = dir.join("appliance.toml");
    std::fs::write(&file, &text).unwrap();
    match Appliance::load(&file) {
        Ok(_) => panic!("case {:?} was accepted:\n{text}", c.name),
        Err(e) => e,
    }
}

#[test]
fn malformed_files_are_placed_and_explained() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for c in CASES {
        let SpecError::Invalid(diags) = run_case(dir.path(), c) else {
            panic!("case {:?}: not a diagnostic", c.name);
        };
        let d = &diags.0[0];
        let ok = d.file == dir.path().join("appliance.toml")
            && (d.line, d.column) == (c.line, c.column)
            && d.field == c.field
            && d.message.contains(c.says);
        if !ok {
            failures.push(format!(
                "{}: got {}:{}: {}: {}\n   want {}:{}: {}: ...{}...",
                c.name, d.line, d.column, d.field, d.message, c.line, c.column, c.field, c.says
            ));
        }
    }
    assert!(CASES.len() >= 20);
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn display_has_file_line_column_field_message() {
    let dir = tempfile::tempdir().unwrap();
    let err = run_case(dir.path(), &CASES[0]);
    let want = format!(
        "{}:4:10: vm.memory: \"12x\" is not a size; write e.g. \"128MiB\"",
        dir.path().join("appliance.toml").display()
    );
    assert_eq!(err.to_string(), want);
}

#[test]
fn every_problem_is_reported_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("appliance.toml");
    std::fs::write(
        &file,
        "[appliance]\nname = \"x\"\n[run]\nhostname = \"_\"\n[vm]\ncpus = 99\nmemory = \"1MiB\"\n",
    )
    .unwrap();
    let Err(SpecError::Invalid(d)) = Appliance::load(&file) else {
        panic!("accepted");
    };
    let fields: Vec<&str> = d.0.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        ["run.command", "run.hostname", "vm.cpus", "vm.memory"]
    );
}

#[test]
fn unreadable_file_names_the_path() {
    let err = Appliance::load(Path::new("/nonexistent/appliance.toml")).unwrap_err();
    assert!(matches!(err, SpecError::Read { .. }));
    assert_eq!(err.to_string(), "cannot read /nonexistent/appliance.toml");
}
