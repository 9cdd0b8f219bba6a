//! BENCHMARK REFERENCE ONLY: not part of duplex, not for use.
//!
//! The simplest hand-written async-std server that sends the same bytes as
//! duplex (greeting, then one `H:M:S - server reply: <line>` per line, both
//! taken from `duplex::wire`): accept,
//! spawn a task per client, read lines, reply. No actors, no registry, no
//! limits, no timeouts, no shutdown. `scripts/bench.sh` runs it beside duplex
//! to measure what the actor design costs.
//!
//! Usage: `cargo run --release --example reference_server -- 127.0.0.1:8001`

use async_std::io::{BufReader, BufWriter};
use async_std::net::{TcpListener, TcpStream};
use async_std::prelude::*;
use async_std::task;
use chrono::Local;
use duplex::wire;

async fn serve(stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(&stream);
    let mut writer = BufWriter::new(&stream);
    writer.write_all(wire::GREETING).await?;
    writer.flush().await?;
    let mut line = Vec::new();
    let mut stamp = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        if line.ends_with(b"\n") {
            line.pop();
        }
        if line.ends_with(b"\r") {
            line.pop();
        }
        stamp.clear();
        wire::write_prefix(&mut stamp, &Local::now());
        writer.write_all(&stamp).await?;
        writer.write_all(&line).await?;
        writer.write_all(b"\n").await?;
        // Flush once the lines already read are answered: one write per batch.
        if reader.buffer().is_empty() {
            writer.flush().await?;
        }
    }
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8001".into());
    task::block_on(async {
        let listener = TcpListener::bind(&addr).await?;
        eprintln!("reference server listening on {}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            task::spawn(async move {
                // A benchmark baseline: errors just end the connection.
                let _ = serve(stream).await;
            });
        }
    })
}
