use std::process::ExitCode;

fn main() -> ExitCode {
    imago::cli::main()
}
