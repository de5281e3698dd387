//! The app of the network-namespace capture tests: a server and the clients that
//! call it, each run as an ordinary (non-proxy) user inside a "pod" namespace.
//! Nothing here knows a proxy exists: clients dial plain addresses.
//!
//! - `serve NAME --http ADDR --greet ADDR...`: an HTTP server answering
//!   `NAME <path>`, and greeting servers: a server-speaks-first protocol that
//!   writes `220 NAME ready\r\n` on accept, reads the client's bytes to EOF
//!   (the client's half-close), then answers `got <bytes>` and closes.
//! - `get URL`: prints the status and body of a GET.
//! - `greet ADDR TEXT`: waits for the greeting before sending anything, sends
//!   TEXT, half-closes, and prints the greeting and the answer.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", name, ref rest @ ..] => serve(name, rest).await,
        ["get", url] => {
            let (status, body) = mesh_tests::http::get(url)
                .await
                .with_context(|| format!("GET {url} failed"))?;
            println!("{status} {body}");
            Ok(())
        }
        ["greet", addr, text] => {
            let addr: SocketAddr = addr.parse().context("greet ADDR")?;
            print!("{}", greet(addr, text).await?);
            Ok(())
        }
        _ => bail!("usage: serve NAME --http ADDR [--greet ADDR]... | get URL | greet ADDR TEXT"),
    }
}

async fn serve(name: &str, flags: &[&str]) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for pair in flags.chunks(2) {
        let [flag, addr] = pair else {
            bail!("flags come in pairs");
        };
        let addr: SocketAddr = addr.parse().with_context(|| format!("{flag} {addr}"))?;
        match *flag {
            "--http" => {
                // Kept alive for as long as the process runs.
                let upstream = mesh_tests::http::Upstream::start(name, addr).await;
                tasks.push(tokio::spawn(async move {
                    let _keep = upstream;
                    std::future::pending::<()>().await
                }));
            }
            "--greet" => {
                let listener = TcpListener::bind(addr).await?;
                let name = name.to_string();
                tasks.push(tokio::spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        tokio::spawn(greeting(name.clone(), stream));
                    }
                }));
            }
            other => bail!("unknown flag {other}"),
        }
    }
    println!("serving");
    for t in tasks {
        t.await?;
    }
    Ok(())
}

/// The server side of the greeting protocol.
async fn greeting(name: String, mut stream: TcpStream) -> std::io::Result<()> {
    stream
        .write_all(format!("220 {name} ready\r\n").as_bytes())
        .await?;
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await?;
    stream
        .write_all(format!("got {}\r\n", String::from_utf8_lossy(&got)).as_bytes())
        .await?;
    stream.shutdown().await
}

/// The client side: nothing is sent before the greeting arrived.
async fn greet(addr: SocketAddr, text: &str) -> anyhow::Result<String> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let mut reader = BufReader::new(stream);
    let mut hello = String::new();
    reader
        .read_line(&mut hello)
        .await
        .context("read greeting")?;
    let mut stream = reader.into_inner();
    stream.write_all(text.as_bytes()).await?;
    stream.shutdown().await.context("half-close")?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .context("read answer")?;
    Ok(format!("{hello}{answer}"))
}
