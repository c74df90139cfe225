use clap::Parser;
use slimserve::config::{Cli, Command};
use std::time::Duration;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    check_cpu()?;
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(args.http_addr).await?;
                tracing::info!(addr = %listener.local_addr()?, "listening (HTTP)");
                let grpc = tokio::net::TcpListener::bind(args.grpc_addr).await?;
                tracing::info!(addr = %grpc.local_addr()?, "listening (gRPC)");
                slimserve::server::serve(args, listener, grpc, slimserve::server::signal()).await
            })
        }
        Command::Bench(args) => slimserve::bench::run(&args),
        Command::Eval(args) => slimserve::eval::run(&args),
        Command::Healthcheck(args) => {
            slimserve::server::healthcheck(args.addr, Duration::from_secs(args.timeout_secs))
        }
    }
}

/// Built for x86-64-v3 (AVX2/FMA) by default: refuse clearly on an older CPU
/// instead of dying on an illegal instruction later.
fn check_cpu() -> anyhow::Result<()> {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
        anyhow::bail!(
            "this binary was built for x86-64-v3 (AVX2/FMA) but the CPU lacks them; \
             rebuild with RUSTFLAGS=\"-C target-cpu=x86-64\" for a portable binary"
        );
    }
    Ok(())
}
