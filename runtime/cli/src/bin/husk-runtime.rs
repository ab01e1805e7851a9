//! `husk-runtime`: runc's command line, so podman, docker and containerd
//! run containers as husk micro-VMs.

fn main() -> std::process::ExitCode {
    cli::oci::main()
}
