//! Every collective of `MpiCommunicator` under `mpirun -n 2`, against what it must give:
//! all-reduce, all-gather of unequal row counts (none included), all-to-all with counts
//! (zeros included), broadcast from each rank, barrier; float32, u32 and bf16 (carried as
//! float32). `cargo test` starts this test's own binary under `mpirun`; the ranks run `child`.
#![cfg(feature = "mpi")]

mod common;

use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use patchwork_parallel::{Communicator, MpiCommunicator};

const CHILD: &str = "PATCHWORK_MPI_COLLECTIVES_CHILD";

#[test]
fn collectives_under_mpirun() {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    let stdout = common::under_mpirun("collectives_under_mpirun", CHILD, Duration::from_secs(120));
    assert_eq!(stdout.matches("collectives checked").count(), 2, "{stdout}");
}

fn v(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn child() {
    let comm = MpiCommunicator::from_launcher().unwrap();
    let (rank, world) = (comm.rank(), comm.world());
    assert_eq!(world, 2);
    let cpu = &Device::Cpu;
    let r = rank as f32;

    // all-reduce, in three dtypes.
    let x = Tensor::new(&[[1f32 + r, 2.0], [3.0, 4.0 * r]], cpu).unwrap();
    assert_eq!(v(&comm.all_reduce(&x).unwrap()), [3.0, 4.0, 6.0, 4.0]);
    let u = Tensor::new(&[7u32 + rank as u32, 1], cpu).unwrap();
    let u_sum = comm.all_reduce(&u).unwrap();
    assert_eq!(u_sum.dtype(), DType::U32);
    assert_eq!(u_sum.to_vec1::<u32>().unwrap(), [15, 2]);
    let b = x.to_dtype(DType::BF16).unwrap();
    let b_sum = comm.all_reduce(&b).unwrap();
    assert_eq!(b_sum.dtype(), DType::BF16);
    assert_eq!(v(&b_sum), [3.0, 4.0, 6.0, 4.0]);

    // all-gather of unequal rows: rank 0 gives one row, rank 1 three, then none and two.
    let rows = Tensor::arange(0f32, 2.0 * (1 + 2 * rank) as f32, cpu)
        .unwrap()
        .affine(1.0, 10.0 * r as f64)
        .unwrap()
        .reshape((1 + 2 * rank, 2))
        .unwrap();
    let all = comm.all_gather(&rows).unwrap();
    assert_eq!(all.dims(), [4, 2]);
    assert_eq!(v(&all), [0.0, 1.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0]);
    let none_or_two = Tensor::ones((2 * rank, 3), DType::F32, cpu).unwrap();
    assert_eq!(comm.all_gather(&none_or_two).unwrap().dims(), [2, 3]);

    // all-to-all with counts: rank 0 sends 2 rows to itself and 1 to rank 1; rank 1 sends
    // none to rank 0 and 2 to itself.
    let send: Vec<usize> = if rank == 0 { vec![2, 1] } else { vec![0, 2] };
    let n: usize = send.iter().sum();
    let t = Tensor::arange(0f32, (n * 2) as f32, cpu)
        .unwrap()
        .affine(1.0, 100.0 * r as f64)
        .unwrap()
        .reshape((n, 2))
        .unwrap();
    let (got, recv) = comm.all_to_all(&t, &send).unwrap();
    if rank == 0 {
        assert_eq!(recv, [2, 0]);
        assert_eq!(v(&got), [0.0, 1.0, 2.0, 3.0]);
    } else {
        assert_eq!(recv, [1, 2]);
        assert_eq!(v(&got), [4.0, 5.0, 100.0, 101.0, 102.0, 103.0]);
    }
    assert!(comm.all_to_all(&t, &[n]).is_err(), "one count per rank");

    // broadcast from each rank; barrier.
    for root in 0..world {
        let mine = Tensor::full(r + 0.5, (2, 2), cpu).unwrap();
        assert_eq!(
            v(&comm.broadcast(&mine, root).unwrap()),
            [root as f32 + 0.5; 4]
        );
    }
    assert!(comm.broadcast(&x, 5).is_err());
    comm.barrier().unwrap();
    println!("rank {rank}: collectives checked");
}
