// mimalloc: the decode path allocates a few small values per row; glibc malloc took a fifth
// of the decode time (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cdc_enricher::main()
}
