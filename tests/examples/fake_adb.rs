//! The test suite's [`FakeAdbServer`] as a standalone process, for scripts
//! that need devices for an agent they run themselves (`scripts/cross-smoke`
//! under qemu, `scripts/footprint`): no phone can be attached here, so this
//! FAKE adb server stands in for the adb server (see `rae_tests::fake_adb`).
//!
//! `fake_adb [--devices N] [--addr-file PATH]` listens on `127.0.0.1:0` with
//! N devices (default 10) in state `device`, serials `FAKE0000`..; each has
//! the five properties the agent reads by default. It writes `host:port` to
//! PATH (or stdout) once listening, and serves until SIGTERM/SIGINT.
//!
//! Build: `cargo build -p rae-tests --example fake_adb`.

use anyhow::{bail, Context, Result};
use rae_tests::fake_adb::FakeAdbServer;
use tokio::signal::unix::{signal, SignalKind};

/// The devices' properties: what the agent's default `[adb].properties` reads.
fn props(i: usize) -> Vec<(&'static str, String)> {
    vec![
        ("ro.product.manufacturer", "rae".to_string()),
        ("ro.product.model", format!("Fake Phone {i}")),
        (
            "ro.build.fingerprint",
            format!("rae/fake/fake:14/FAKE.{i}/1:user/release-keys"),
        ),
        ("ro.build.version.release", "14".to_string()),
        ("ro.serialno", serial(i)),
    ]
}

fn serial(i: usize) -> String {
    format!("FAKE{i:04}")
}

struct Args {
    devices: usize,
    addr_file: Option<std::path::PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        devices: 10,
        addr_file: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--devices" => {
                let n = it.next().context("--devices needs a number")?;
                args.devices = n.parse().with_context(|| format!("--devices {n:?}"))?;
            }
            "--addr-file" => {
                args.addr_file = Some(it.next().context("--addr-file needs a path")?.into());
            }
            other => bail!(
                "unknown argument {other:?} (usage: fake_adb [--devices N] [--addr-file PATH])"
            ),
        }
    }
    Ok(args)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let server = FakeAdbServer::start().await?;
    for i in 0..args.devices {
        let props = props(i);
        let props: Vec<(&str, &str)> = props.iter().map(|(k, v)| (*k, v.as_str())).collect();
        server.add_device(&serial(i), "device", &props);
    }
    match &args.addr_file {
        Some(path) => {
            // Written whole, then renamed: a reader never sees half an address.
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, server.server())
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, path)
                .with_context(|| format!("renaming to {}", path.display()))?;
        }
        None => println!("{}", server.server()),
    }
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
