//! Model throughput on the CPU: inference (BatchNorm folded, as `heatmap` runs it) in
//! f32 and int8 ([`histomap::model::int8`], the kernel path this CPU runs), and
//! training steps (forward in training mode + backward), images per second, on random
//! input. `scripts/bench-vs-pytorch.sh` runs this beside the same measurement in PyTorch.
//!
//! usage: cargo bench --bench models -- ARCH SIZE BATCH [ITERS [int8]]   (e.g. smallcnn 96 32)
//! A fifth argument `int8` times the int8 path alone, for profiling it.

use std::time::Instant;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use histomap::model::{Architecture, Network};

fn main() {
    histomap::tune_allocator();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let name = args.first().map(String::as_str).unwrap_or("smallcnn");
    let arch = <Architecture as clap::ValueEnum>::from_str(name, true)
        .unwrap_or_else(|e| panic!("unknown architecture {name}: {e}"));
    let num = |i: usize, d: usize| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
    let (size, batch, iters) = (num(1, 96), num(2, 32), num(3, 5));
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let net = Network::new(arch, VarBuilder::from_varmap(&varmap, DType::F32, &dev), 2).unwrap();
    let x = Tensor::randn(0f32, 1.0, (batch, 3, size, size), &dev).unwrap();
    let y = Tensor::zeros(batch, DType::U32, &dev).unwrap();

    let mut fused = net.clone();
    fused.fuse().unwrap();
    let time = |f: &dyn Fn()| {
        f(); // warm-up
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        (batch * iters) as f64 / t.elapsed().as_secs_f64()
    };
    let pixels = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let int8 =
        histomap::model::int8::Int8Net::new(&fused, histomap::model::int8::Isa::detect()).ok();
    let int8_figure = int8.as_ref().map_or(String::new(), |q| {
        let img_s = time(&|| {
            q.logits(&pixels, batch, size);
        });
        format!(" int8_{}_img_s={img_s:.1}", q.isa().name())
    });
    if args.get(4).map(String::as_str) == Some("int8") {
        println!("candle {arch:?} size={size} batch={batch}{int8_figure}");
        return;
    }
    let infer = time(&|| {
        fused
            .forward_t(&x, false)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
    });
    let train = time(&|| {
        let logits = net.forward_t(&x, true).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
        loss.backward().unwrap();
    });
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    println!("candle {arch:?} size={size} batch={batch} threads={threads} infer_img_s={infer:.1}{int8_figure} train_img_s={train:.1}");
}
