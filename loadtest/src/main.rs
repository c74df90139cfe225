use clap::Parser;
use loadtest::{report, Args};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let out = args.out.clone();
    let res = if args.merge.is_empty() {
        rt.block_on(loadtest::run(args))?
    } else {
        loadtest::merge(&args.merge)?
    };
    let files = report::write_all(&out, &res)?;
    eprintln!(
        "\n{}",
        report::markdown(&res)
            .split("### Every step")
            .next()
            .unwrap_or("")
    );
    eprintln!("wrote {} in {}", files.join(", "), out.display());
    Ok(())
}
