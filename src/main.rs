fn main() -> std::process::ExitCode {
    cdc_enricher::cli::main()
}
