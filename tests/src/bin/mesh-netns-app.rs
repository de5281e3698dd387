//! The app of the network-namespace capture tests: a server and the clients that
//! call it, each run as an ordinary (non-proxy) user inside a "pod" namespace.
//! Nothing here knows a proxy exists: clients dial plain addresses.
//!
//! - `serve NAME --http ADDR --greet ADDR...`: an HTTP server answering
//!   `NAME <path>`, and greeting servers: a server-speaks-first protocol that
//!   writes `220 NAME ready\r\n` on accept, reads the client's bytes to EOF
//!   (the client's half-close), then answers `got <bytes>` and closes.
//! - `--upgrade ADDR`: answers an HTTP/1.1 `Upgrade: websocket` request with
//!   `101` and then echoes what it receives in upper case (a stand-in for a
//!   WebSocket server: the mesh only has to pass the upgraded bytes through).
//! - `get URL`: prints the status and body of a GET.
//! - `upgrade ADDR HOST TEXT`: sends an Upgrade request, prints the status line,
//!   then sends TEXT on the upgraded connection and prints the echo.
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
        ["upgrade", addr, host, text] => {
            let addr: SocketAddr = addr.parse().context("upgrade ADDR")?;
            print!("{}", upgrade(addr, host, text).await?);
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
            "--upgrade" => {
                let listener = TcpListener::bind(addr).await?;
                tasks.push(tokio::spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        tokio::spawn(upgraded_echo(stream));
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

/// Reads an HTTP/1.1 head (up to the blank line) from `reader`.
async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 || line == "\r\n" {
            return Ok(head);
        }
        head.push_str(&line);
    }
}

/// The server side of the upgrade: 101, then an upper-casing echo until EOF.
async fn upgraded_echo(stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let head = read_head(&mut reader).await?;
    let mut stream = reader.into_inner();
    if !head.to_ascii_lowercase().contains("upgrade: websocket") {
        stream
            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .await?;
        return Ok(());
    }
    stream
        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
        .await?;
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return stream.shutdown().await;
        }
        stream.write_all(&buf[..n].to_ascii_uppercase()).await?;
    }
}

/// The client side: an Upgrade request, then one echo over the upgraded bytes.
async fn upgrade(addr: SocketAddr, host: &str, text: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let req = format!(
        "GET /chat HTTP/1.1\r\nhost: {host}\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    let mut reader = BufReader::new(stream);
    let head = read_head(&mut reader).await.context("read 101")?;
    let status = head.lines().next().unwrap_or_default().to_string();
    let mut stream = reader.into_inner();
    stream.write_all(text.as_bytes()).await?;
    stream.shutdown().await.context("half-close")?;
    let mut echo = String::new();
    stream
        .read_to_string(&mut echo)
        .await
        .context("read echo")?;
    Ok(format!("{status}\n{echo}"))
}
