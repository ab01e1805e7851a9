//! `husk`: build and run virtual appliances as KVM micro-VMs.

fn main() -> std::process::ExitCode {
    cli::husk_main()
}
