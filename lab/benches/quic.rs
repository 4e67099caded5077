//! The QUIC document's performance targets, measured with lab's own QUIC stack on
//! loopback (`lab::bench`): stream-open latency, one stream's throughput, streams open
//! at once, datagram latency. `cargo bench -p lab --bench quic`; client and server share
//! the machine's cores. The same through a lab cell's link: `sudo lab up ...`, then
//! `sudo lab bench quic --cell <cell>`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (server, client) = lab::bench::loopback()?;
    let r = lab::bench::run(server, client, "loopback", lab::bench::Sizes::FULL).await?;
    println!("{}", r.table());
    Ok(())
}
