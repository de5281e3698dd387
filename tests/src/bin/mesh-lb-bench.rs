//! The cost of one endpoint pick, per balancer: least request (P2C over
//! peak-EWMA × in-flight), weighted round robin and ring hash, over clusters of
//! several sizes, with and without weights. A measurement, not a test.
//!
//! Each pick does what the request path does: read the clock, check ejection
//! and load of the candidates (real `EndpointLoad`/`EndpointHealth` values), and
//! for ring hash hash the key first. Threads pick concurrently to show the
//! lock-free paths scale.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use mesh_proxy::balancer::{Balancer, hash_bytes};
use mesh_proxy::clock::now_ns;
use mesh_proxy::decode_policy::LbKind;
use mesh_proxy::endpoint_load::EndpointLoad;
use mesh_proxy::outlier::{EjectedCount, EndpointHealth};

#[derive(Parser)]
#[command(about = "ns per endpoint pick, per balancer")]
struct Args {
    /// Cluster sizes (endpoints).
    #[arg(long, value_delimiter = ',', default_value = "3,10,100,1000")]
    endpoints: Vec<usize>,
    /// Picks per measurement and thread.
    #[arg(long, default_value_t = 2_000_000)]
    picks: u64,
    /// Concurrent picking threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

struct Cluster {
    balancer: Balancer,
    loads: Vec<EndpointLoad>,
    health: Vec<EndpointHealth>,
    ejected: EjectedCount,
}

impl Cluster {
    fn new(kind: LbKind, n: usize, weighted: bool) -> Cluster {
        let weights: Vec<u32> = (0..n)
            .map(|i| if weighted { 1 + (i % 4) as u32 } else { 1 })
            .collect();
        let keys: Vec<String> = (0..n)
            .map(|i| format!("10.1.{}.{}:8080", i / 250, i % 250))
            .collect();
        let loads: Vec<EndpointLoad> = (0..n).map(|_| EndpointLoad::default()).collect();
        // Some load and latency history, so costs differ as in a live cluster.
        for (i, l) in loads.iter().enumerate() {
            for _ in 0..(i % 3) {
                std::mem::forget(l.start());
            }
        }
        Cluster {
            balancer: Balancer::new(kind, &weights, &keys),
            loads,
            health: (0..n).map(|_| EndpointHealth::default()).collect(),
            ejected: EjectedCount::default(),
        }
    }

    fn pick(&self, hash: Option<u64>) -> Option<usize> {
        let now = now_ns();
        self.balancer.pick(
            self.loads.len(),
            hash,
            |i| !self.health[i].is_ejected(now, &self.ejected),
            |i| self.loads[i].cost(now),
        )
    }
}

fn measure(cluster: &Arc<Cluster>, ring: bool, args: &Args) -> f64 {
    let threads: Vec<_> = (0..args.threads)
        .map(|t| {
            let cluster = cluster.clone();
            let picks = args.picks;
            std::thread::spawn(move || {
                let keys: Vec<String> = (0..1024).map(|k| format!("user-{t}-{k}")).collect();
                let start = Instant::now();
                for n in 0..picks {
                    let hash = ring.then(|| hash_bytes(keys[(n % 1024) as usize].as_bytes()));
                    black_box(cluster.pick(black_box(hash)));
                }
                start.elapsed().as_nanos() as f64 / picks as f64
            })
        })
        .collect();
    let per_thread: Vec<f64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    per_thread.iter().sum::<f64>() / per_thread.len() as f64
}

fn main() {
    let args = Args::parse();
    println!(
        "| balancer | endpoints | weights | ns/pick ({} thread(s)) |",
        args.threads
    );
    println!("| --- | ---: | --- | ---: |");
    for &n in &args.endpoints {
        for weighted in [false, true] {
            for (name, kind, ring) in [
                ("least request (P2C)", LbKind::LeastRequest, false),
                ("round robin", LbKind::RoundRobin, false),
                (
                    "ring hash (incl. key hash)",
                    LbKind::RingHash {
                        min_ring_size: 1024,
                    },
                    true,
                ),
            ] {
                let cluster = Arc::new(Cluster::new(kind, n, weighted));
                measure(
                    &cluster,
                    ring,
                    &Args {
                        picks: args.picks / 10,
                        ..clone(&args)
                    },
                );
                let ns = measure(&cluster, ring, &args);
                let w = if weighted { "1-4" } else { "equal" };
                println!("| {name} | {n} | {w} | {ns:.1} |");
            }
        }
    }
}

fn clone(a: &Args) -> Args {
    Args {
        endpoints: a.endpoints.clone(),
        picks: a.picks,
        threads: a.threads,
    }
}
