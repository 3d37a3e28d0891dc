//! Numeric parity with PyTorch: seeded weights as safetensors and PyTorch's eval-mode
//! logits for fixed inputs (see fixtures/README.md). SmallCnn and the ignored full-width
//! ResNet-18 come from `../shared/peers/wsinfer_model.py --seed 0`; the narrow ResNets
//! that run in CI and the ignored ResNet-50 from `scripts/make-resnet-golden.py`.

mod common;

use std::path::Path;

use candle_core::Tensor;
use candle_core::{DType, Device, ModuleT};
use candle_nn::VarBuilder;
use histomap::model::int8::{Int8Net, Isa};
use histomap::model::{Architecture, Classifier, MobileNet, Network, ResNet};

/// Max |candle − PyTorch| over the logits of the fixed inputs in `io`.
fn parity(dir: &Path, io: &Path) -> f32 {
    let model = Classifier::load(dir, &Device::Cpu).unwrap();
    let pair = candle_core::safetensors::load(io, &Device::Cpu).unwrap();
    common::max_abs_diff(&model.logits(&pair["x"]).unwrap(), &pair["y"])
}

#[test]
fn smallcnn_matches_pytorch() {
    let dir = common::root().join("fixtures/smallcnn96");
    let d = parity(&dir, &dir.join("io.safetensors"));
    assert!(d < 1e-4, "max |candle - torch| = {d}");
    let mut net = Network::new(
        Architecture::Smallcnn,
        VarBuilder::from_tensors(
            candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap(),
            DType::F32,
            &Device::Cpu,
        ),
        2,
    )
    .unwrap();
    net.fuse().unwrap();
    let pair = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
    let int8 = Int8Net::new(&net, Isa::detect()).unwrap();
    int8_follows("smallcnn96", &int8, &pair["x"], &pair["y"]);
}

#[test]
fn wsinfer_model_folder_loads_and_runs() {
    let fixture = common::root().join("fixtures/smallcnn96");
    let dir = tempfile::tempdir().unwrap();
    common::wsinfer_model(dir.path());
    let model = Classifier::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(model.card.classes[1].name, "tumor");
    assert_eq!(model.card.normalization.std, [0.229, 0.224, 0.225]);
    let d = parity(dir.path(), &fixture.join("io.safetensors"));
    assert!(d < 1e-4, "max |candle - torch| = {d}");
}

/// Parity of torchvision's ResNet-18 and -50 code at 8 stem channels instead of 64:
/// every parameter name and operation of the full nets, in a 1–2 MB fixture. Both the
/// training graph (BatchNorm as its own op) and the fused inference graph are checked.
fn narrow_resnet_matches_pytorch(name: &str, arch: Architecture) {
    let (kind, blocks) = arch.resnet_layout().unwrap();
    let dir = common::root().join("fixtures").join(name);
    let dev = Device::Cpu;
    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &dev).unwrap();
    let vb = VarBuilder::from_tensors(weights, DType::F32, &dev);
    let mut net = ResNet::new(vb, kind, blocks, 8, 8).unwrap();
    let pair = candle_core::safetensors::load(dir.join("io.safetensors"), &dev).unwrap();
    let (x, y) = (&pair["x"], &pair["y"]);
    let d = common::max_abs_diff(&net.forward_t(x, false).unwrap(), y);
    assert!(d < 1e-4, "{name}: max |candle - torch| = {d}");
    net.fuse().unwrap();
    let fused = common::max_abs_diff(&net.forward_t(x, false).unwrap(), y);
    // The figure for issue notes: `cargo test --release --test golden -- --nocapture`.
    eprintln!("{name}: max |candle - torch| = {d:.2e}, BatchNorm fused {fused:.2e}");
    let d = fused;
    assert!(
        d < 1e-4,
        "{name}, BatchNorm fused: max |candle - torch| = {d}"
    );
    let int8 = Int8Net::new(&Network::ResNet(net), Isa::detect()).unwrap();
    int8_follows(name, &int8, x, y);
}

/// int8 logits against PyTorch's f32 ones: the same argmax, and a relative error of a
/// few percent (quantisation, not a wrong layer, which would be of order 1).
fn int8_follows(name: &str, net: &Int8Net, x: &Tensor, y: &Tensor) {
    let (n, _, side, _) = x.dims4().unwrap();
    let pixels = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let got = Tensor::from_vec(net.logits(&pixels, n, side), y.shape(), x.device()).unwrap();
    let argmax = |t: &Tensor| t.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    assert_eq!(argmax(&got), argmax(y), "{name}: int8 argmax");
    let err = common::max_abs_diff(&got, y) / common::max_abs_diff(y, &y.zeros_like().unwrap());
    eprintln!("{name}: int8 max |Δ logit| / max |logit| = {err:.3}");
    assert!(err < 0.05, "{name}: int8 relative error {err}");
}

#[test]
fn narrow_resnet18_matches_pytorch() {
    narrow_resnet_matches_pytorch("resnet18_w8", Architecture::Resnet18);
}

#[test]
fn narrow_resnet50_matches_pytorch() {
    narrow_resnet_matches_pytorch("resnet50_w8", Architecture::Resnet50);
}

/// Parity of a torchvision ResNet from `HISTOMAP_PEER_MODELS/<name>` (weights too big
/// to ship): `resnet18_150` from `python ../shared/peers/wsinfer_model.py --out DIR`,
/// `resnet50_150` from `python scripts/make-resnet-golden.py DIR resnet50`; then
/// `HISTOMAP_PEER_MODELS=DIR cargo test --release --test golden -- --ignored`.
fn resnet_matches_pytorch(name: &str, arch: Architecture) {
    let peers = std::path::PathBuf::from(
        std::env::var("HISTOMAP_PEER_MODELS").expect("HISTOMAP_PEER_MODELS"),
    );
    let src = peers.join(name);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let p = histomap::pipeline::Pipeline::load(&common::pipeline("kather8")).unwrap();
    let card = histomap::model::ModelCard::for_pipeline(
        &p,
        arch,
        false,
        "peer: seeded random weights".into(),
    );
    std::fs::write(
        dir.path().join("card.json"),
        serde_json::to_vec(&card).unwrap(),
    )
    .unwrap();
    let d = parity(dir.path(), &src.join("io.safetensors"));
    assert!(d < 1e-4, "{name}: max |candle - torch| = {d}");
}

#[test]
#[ignore = "needs HISTOMAP_PEER_MODELS (45 MB of ResNet-18 weights made by the peer script)"]
fn resnet18_matches_pytorch() {
    resnet_matches_pytorch("resnet18_150", Architecture::Resnet18);
}

#[test]
#[ignore = "needs HISTOMAP_PEER_MODELS (94 MB of ResNet-50 weights, scripts/make-resnet-golden.py)"]
fn resnet50_matches_pytorch() {
    resnet_matches_pytorch("resnet50_150", Architecture::Resnet50);
}

/// `--tta d4`: the mean over the 8 dihedral views is invariant under each of them (so
/// the views form the whole group), and it is not the plain prediction (on these
/// random weights the views differ by up to 9e-4; float noise is 6e-8).
#[test]
fn d4_test_time_augmentation_is_invariant_under_d4() {
    let dir = common::root().join("fixtures/smallcnn96");
    let mut model = Classifier::load(&dir, &Device::Cpu).unwrap();
    let x = &candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap()["x"];
    let n = x.dims()[0];
    let pixels: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    let plain = model.predict(pixels.clone(), n).unwrap();
    model.tta = true;
    let mean = model.predict(pixels.clone(), n).unwrap();
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max)
    };
    assert!(
        max_diff(&plain, &mean) > 1e-4,
        "TTA changes the probabilities: {}",
        max_diff(&plain, &mean)
    );
    let plane = 3 * 96 * 96;
    for k in 0..8 {
        let mut view = vec![0.0; pixels.len()];
        for (src, dst) in pixels.chunks(plane).zip(view.chunks_mut(plane)) {
            histomap::model::tta::dihedral_chw(src, 96, k, dst);
        }
        let d = max_diff(&model.predict(view, n).unwrap(), &mean);
        assert!(d < 1e-6, "view {k}: {d}");
    }
}

/// torchvision's MobileNetV2 and EfficientNet-Lite0 (the ImageNet checkpoint's names) at
/// width 0.25 (every parameter name and operation of the full nets, in 1.3 and 1.8 MB
/// fixtures from `scripts/make-mobilenet-golden.py`): eval-mode logits with BatchNorm
/// as its own op and folded, and train-mode logits (batch statistics), against
/// PyTorch's.
#[test]
fn narrow_mobilenets_match_pytorch() {
    type Build = fn(VarBuilder) -> candle_core::Result<MobileNet>;
    let nets: [(&str, Build); 2] = [
        ("mobilenetv2_w25", |vb| MobileNet::v2(vb, 0.25, 8)),
        ("efficientnet_lite0_w25", |vb| {
            MobileNet::efficientnet_lite0(vb, 0.25, 8)
        }),
    ];
    for (name, build) in nets {
        let dir = common::root().join("fixtures").join(name);
        let dev = Device::Cpu;
        let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &dev).unwrap();
        let vb = VarBuilder::from_tensors(weights, DType::F32, &dev);
        let net = build(vb).unwrap();
        let pair = candle_core::safetensors::load(dir.join("io.safetensors"), &dev).unwrap();
        let x = &pair["x"];
        let eval = common::max_abs_diff(&net.forward_t(x, false).unwrap(), &pair["y"]);
        let mut fused_net = net.clone();
        fused_net.fuse().unwrap();
        let fused = common::max_abs_diff(&fused_net.forward_t(x, false).unwrap(), &pair["y"]);
        // Last: a training-mode pass moves the running statistics, as PyTorch's does.
        let train = common::max_abs_diff(&net.forward_t(x, true).unwrap(), &pair["y_train"]);
        // The figure for issue notes: `cargo test --release --test golden -- --nocapture`.
        eprintln!(
            "{name}: max |candle - torch| = {eval:.2e} eval, {train:.2e} train, \
             {fused:.2e} BatchNorm fused"
        );
        for (what, d) in [("eval", eval), ("train", train), ("fused", fused)] {
            assert!(d < 1e-5, "{name} {what}: max |candle - torch| = {d}");
        }
    }
}

/// The depthwise convolution's forward pass and both gradients against PyTorch's
/// (`conv2d(groups=C)` in float64, `scripts/make-mobilenet-golden.py`), on every kernel
/// path this CPU runs.
#[test]
fn depthwise_convolution_and_gradients_match_pytorch() {
    use histomap::model::depthwise::depthwise_conv2d_with;
    use histomap::model::isa::Isa;
    let dev = Device::Cpu;
    let io = candle_core::safetensors::load(
        common::root().join("fixtures/depthwise/io.safetensors"),
        &dev,
    )
    .unwrap();
    // (k, stride) of case0..case4, as the script writes them.
    for (i, (k, stride)) in [(3, 1), (3, 2), (5, 1), (5, 2), (3, 2)]
        .into_iter()
        .enumerate()
    {
        let get = |name: &str| io[&format!("case{i}.{name}")].clone();
        let x = candle_core::Var::from_tensor(&get("x")).unwrap();
        let w = candle_core::Var::from_tensor(&get("w")).unwrap();
        for isa in [Isa::Portable, Isa::Avx2]
            .into_iter()
            .filter(|i| i.available())
        {
            let y = depthwise_conv2d_with(isa, &x, &w, stride, k / 2).unwrap();
            let grads = (&y * get("gy"))
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (what, got, want) in [
                ("y", &y, get("y")),
                ("dx", grads.get(&x).unwrap(), get("dx")),
                ("dw", grads.get(&w).unwrap(), get("dw")),
            ] {
                let scale = common::max_abs_diff(&want, &want.zeros_like().unwrap()).max(1.0);
                let d = common::max_abs_diff(got, &want) / scale;
                assert!(d < 1e-5, "case{i} {isa:?} {what}: relative error {d}");
            }
        }
    }
}

/// TIAToolbox 1.6's Macenko and Reinhard on two real Kather tiles
/// (`scripts/make-stain-golden.py`, fixtures/stain).
mod stain {
    use histomap::stain::{pixels, Method, Stains, Target, Transform};
    use image::RgbImage;

    fn tile(name: &str) -> RgbImage {
        image::open(super::common::root().join("fixtures/stain").join(name))
            .unwrap()
            .to_rgb8()
    }

    fn golden() -> serde_json::Value {
        let text =
            std::fs::read_to_string(super::common::root().join("fixtures/stain/golden.json"));
        serde_json::from_str(&text.unwrap()).unwrap()
    }

    fn floats(v: &serde_json::Value) -> Vec<f32> {
        match v {
            serde_json::Value::Array(a) => a.iter().flat_map(floats).collect(),
            other => vec![other.as_f64().unwrap() as f32],
        }
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// (mean, largest) byte difference between two images of one size.
    fn pixel_diff(a: &RgbImage, b: &RgbImage) -> (f64, u8) {
        let d: Vec<u8> = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| x.abs_diff(*y))
            .collect();
        let mean = d.iter().map(|&v| f64::from(v)).sum::<f64>() / d.len() as f64;
        (mean, d.into_iter().max().unwrap())
    }

    #[test]
    fn macenko_stains_match_tiatoolbox() {
        let g = golden();
        for name in ["source", "target"] {
            let s = Stains::estimate(pixels(&tile(&format!("{name}.png")))).unwrap();
            let m = s.stain_matrix.concat();
            let d = max_diff(&m, &floats(&g[name]["macenko_stain_matrix"]));
            assert!(d < 2e-3, "{name}: stain matrix {m:?} differs by {d}");
            let want = floats(&g[name]["macenko_max_concentrations"]);
            for (c, w) in s.max_concentrations.iter().zip(&want) {
                assert!(
                    (c / w - 1.0).abs() < 2e-3,
                    "{name}: max concentrations {:?} vs {want:?}",
                    s.max_concentrations
                );
            }
        }
    }

    #[test]
    fn reinhard_statistics_match_tiatoolbox() {
        let g = golden();
        for name in ["source", "target"] {
            let t = Target::fit(pixels(&tile(&format!("{name}.png"))), name.into()).unwrap();
            let d = max_diff(&t.reinhard.means, &floats(&g[name]["reinhard_means"]));
            let s = max_diff(&t.reinhard.stds, &floats(&g[name]["reinhard_stds"]));
            assert!(
                d < 0.05 && s < 0.05,
                "{name}: {:?} differs by {d} (means), {s} (stds)",
                t.reinhard
            );
        }
    }

    #[test]
    fn normalised_pixels_match_tiatoolbox() {
        let source = tile("source.png");
        let target = Target::fit(pixels(&tile("target.png")), "target.png".into()).unwrap();
        for (method, golden, mean_bound, max_bound) in [
            (Method::Macenko, "macenko.png", 0.05, 1),
            // OpenCV converts 8-bit LAB in fixed point: a few bytes apart here and there.
            (Method::Reinhard, "reinhard.png", 0.5, 4),
        ] {
            let (transform, _) = Transform::new(method, &target, pixels(&source))
                .unwrap()
                .unwrap();
            let mut ours = source.clone();
            transform.apply(&mut ours);
            let (mean, max) = pixel_diff(&ours, &tile(golden));
            assert!(
                mean < mean_bound && max <= max_bound,
                "{method}: bytes differ from TIAToolbox's by {mean:.3} on average, {max} at most"
            );
        }
    }

    /// Mean absolute byte difference over an image's channels.
    fn mean_diff(a: &RgbImage, b: &RgbImage) -> f64 {
        pixel_diff(a, b).0
    }

    #[test]
    fn macenko_undoes_a_restain_that_changes_the_raw_pixels() {
        // restained.png: source.png with haematoxylin x1.35 and eosin x0.7.
        let target = Target::fit(pixels(&tile("target.png")), "target.png".into()).unwrap();
        let norm = histomap::stain::Normalize::new(Method::Macenko, target, "t".into()).unwrap();
        let (mut a, mut b) = (tile("source.png"), tile("restained.png"));
        let raw = mean_diff(&a, &b);
        assert!(norm.own(&mut a) && norm.own(&mut b));
        let normalised = mean_diff(&a, &b);
        assert!(
            raw > 5.0 && normalised < raw / 2.0,
            "mean byte difference {raw:.1} as read, {normalised:.1} normalised"
        );
    }
}
