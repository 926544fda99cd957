//! GFLOP/s of [`Weights::product`] on the product shapes ResNet50's convolutions use, on one
//! thread and shared by two, the weights laid out beforehand as a model's are: the numbers
//! behind the block sizes in the inference crate's CPU kernels.
//! `cargo run --release -p matmul --example rate`.

use matmul::{Accumulate, Weights};

fn main() {
    // (rows, inner, columns, threads): output pixels per block × patch length × channels out.
    let cases = [
        (256, 64, 256, 1),   // 1×1 on 56×56, a 256-row block
        (256, 576, 64, 1),   // 3×3 by patches, 64 channels
        (40, 4608, 512, 1),  // 3×3 on 7×7 at batch 8, 40-row blocks
        (49, 512, 2048, 1),  // 1×1 on 7×7 at batch 1, one thread
        (49, 512, 2048, 2),  // the same, shared by two threads
        (49, 4608, 512, 1),  // 3×3 on 7×7 at batch 1, one thread
        (49, 4608, 512, 2),  // the same, shared
        (392, 4608, 512, 1), // 3×3 on 7×7 at batch 8 as one block
    ];
    println!(
        "{:>5} {:>6} {:>6} {:>8} {:>9}",
        "rows", "inner", "cols", "threads", "GFLOP/s"
    );
    for (m, k, n, threads) in cases {
        let lhs = vec![0.5f32; m * k];
        let weights = Weights::new(vec![0.25f32; k * n], k, n);
        let mut dst = vec![0.0f32; m * n];
        let flops = 2.0 * (m * k * n) as f64;
        let reps = (4e9 / flops).max(3.0) as usize;
        weights.product(&mut dst, &lhs, m, Accumulate::No, threads);
        let started = std::time::Instant::now();
        for _ in 0..reps {
            weights.product(&mut dst, &lhs, m, Accumulate::No, threads);
        }
        let rate = flops * reps as f64 / started.elapsed().as_secs_f64() / 1e9;
        println!("{m:>5} {k:>6} {n:>6} {threads:>8} {rate:>9.1}");
    }
}
