//! Measures what AllReduce's gradients cost over MPI on this machine, both ways the runtime
//! could move them: MPI's own `MPI_Allreduce` of the benchmark MLP's 1,290,510 values, and the
//! point-to-point exchange that servers beside two workers make (half of the values each way).
//! Run with two ranks (docs/PERFORMANCE.md quotes it):
//!
//! ```sh
//! cargo build --release -p singa-comm --features mpi --example mpi_exchange
//! mpirun -np 2 target/release/examples/mpi_exchange                     # shared memory
//! mpirun --mca btl tcp,self -np 2 target/release/examples/mpi_exchange  # TCP
//! ```

use mpi::collective::SystemOperation;
use mpi::traits::*;
use std::time::Instant;

/// The benchmark MLP's parameters (784-1000-500-10).
const VALUES: usize = 1_290_510;
const WARMUP: usize = 20;
const REPS: usize = 200;

fn main() {
    let Some(universe) = mpi::initialize() else {
        eprintln!("mpi_exchange: MPI could not be initialised");
        std::process::exit(1);
    };
    let world = universe.world();
    if world.size() != 2 {
        eprintln!("mpi_exchange: run it with two ranks (mpirun -np 2)");
        std::process::exit(1);
    }
    let send = vec![1.0f32; VALUES];
    let mut recv = vec![0.0f32; VALUES];
    let allreduce =
        median_ms(|| world.all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum()));
    let other = world.process_at_rank(1 - world.rank());
    let half = VALUES / 2;
    let exchange = median_ms(|| {
        mpi::request::scope(|scope| {
            let sent = other.immediate_send(scope, &send[..half]);
            other.receive_into(&mut recv[..half]);
            sent.wait();
        })
    });
    if world.rank() == 0 {
        println!(
            "MPI_Allreduce of {VALUES} f32: {allreduce:.3} ms; exchange of half of them each way: {exchange:.3} ms (medians of {REPS})"
        );
    }
}

/// The median of `REPS` timings of `f`, in milliseconds, after `WARMUP` untimed runs.
fn median_ms(mut f: impl FnMut()) -> f64 {
    for _ in 0..WARMUP {
        f();
    }
    let mut times: Vec<f64> = (0..REPS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[REPS / 2]
}
