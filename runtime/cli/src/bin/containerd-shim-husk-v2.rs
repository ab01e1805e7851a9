//! `containerd-shim-husk-v2`: containerd runs containers, and Kubernetes
//! pods, as husk micro-VMs (runtime type `io.containerd.husk.v2`).

fn main() -> std::process::ExitCode {
    cli::shim::main()
}
