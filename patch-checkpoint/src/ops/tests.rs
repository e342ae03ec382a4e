//! The ops run on values and round-trip through their reverses.

use super::*;
use candle_core::Device;
use proptest::prelude::*;

fn t(shape: &[usize], offset: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|i| offset + i as f32).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn v2(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2().unwrap()
}

fn one(stage: &[Part<Tensor>], i: usize) -> &Tensor {
    match &stage[i] {
        Part::One(t) => t,
        Part::Many(_) => panic!("expected a tensor"),
    }
}

#[test]
fn op_values() {
    let a = t(&[2, 2], 0.0); // [[0,1],[2,3]]
    let b = t(&[2, 2], 10.0); // [[10,11],[12,13]]
    let s = |v: Vec<Tensor>| v.into_iter().map(Part::One).collect::<Vec<_>>();

    let out = run_steps(
        &[Step::Concatenate(Concatenate { dim: 1 })],
        s(vec![a.clone(), b.clone()]),
    )
    .unwrap();
    assert_eq!(
        v2(one(&out, 0)),
        vec![vec![0., 1., 10., 11.], vec![2., 3., 12., 13.]]
    );

    let out = run_steps(
        &[Step::Interleave(Interleave { dim: 0 })],
        s(vec![a.clone(), b.clone()]),
    )
    .unwrap();
    assert_eq!(
        v2(one(&out, 0)),
        vec![vec![0., 1.], vec![10., 11.], vec![2., 3.], vec![12., 13.]]
    );

    let out = run_steps(
        &[Step::Deinterleave(DeinterleaveInto { dim: 0, n: 2 })],
        s(vec![t(&[4, 1], 0.0)]),
    )
    .unwrap();
    assert_eq!(v2(one(&out, 0)), vec![vec![0.], vec![2.]]);
    assert_eq!(v2(one(&out, 1)), vec![vec![1.], vec![3.]]);

    let out = run_steps(
        &[Step::Split(Split {
            dim: 0,
            sizes: vec![1, 3],
        })],
        s(vec![t(&[4, 1], 0.0)]),
    )
    .unwrap();
    assert_eq!(v2(one(&out, 1)), vec![vec![1.], vec![2.], vec![3.]]);

    let out = run_steps(
        &[Step::Transpose(Transpose { dim0: 0, dim1: 1 })],
        s(vec![a.clone()]),
    )
    .unwrap();
    assert_eq!(v2(one(&out, 0)), vec![vec![0., 2.], vec![1., 3.]]);

    let out = run_steps(
        &[Step::MergeModulelist(MergeModulelist { dim: 1 })],
        vec![Part::Many(vec![a.clone(), b.clone()])],
    )
    .unwrap();
    assert_eq!(one(&out, 0).dims(), &[2, 2, 2]);
    assert_eq!(
        one(&out, 0).get(0).unwrap().to_vec2::<f32>().unwrap(),
        vec![vec![0., 1.], vec![10., 11.]]
    );

    let out = run_steps(
        &[Step::SplitModulelist(SplitModulelist { dim: 0 })],
        s(vec![a]),
    )
    .unwrap();
    let Part::Many(items) = &out[0] else { panic!() };
    assert_eq!(items[1].to_vec1::<f32>().unwrap(), vec![2., 3.]);
}

/// An op chain, the shapes it starts from, and its number of targets.
fn case() -> impl Strategy<Value = (Vec<Op>, Shapes, usize)> {
    let shape = prop::collection::vec(1usize..4, 1..4);
    (shape, 0usize..7, 1usize..4, 0usize..3).prop_map(|(base, which, n, d)| {
        let dim = d % base.len();
        let rank = base.len();
        match which {
            // Concatenate n tensors of different sizes along dim.
            0 => {
                let inputs = (0..n)
                    .map(|i| {
                        let mut s = base.clone();
                        s[dim] += i;
                        Part::One(s)
                    })
                    .collect();
                (vec![Op::Concatenate { dim }], inputs, 1)
            }
            // Chunk one tensor into n.
            1 => {
                let mut s = base.clone();
                s[dim] *= n;
                (vec![Op::Chunk { dim }], vec![Part::One(s)], n)
            }
            // Stack module lists of n, then concatenate the stacks (Qwen2-MoE's gate/up).
            2 => {
                let lists = vec![
                    Part::Many(vec![base.clone(); n]),
                    Part::Many(vec![base.clone(); n]),
                ];
                (
                    vec![Op::MergeModulelist { dim: 0 }, Op::Concatenate { dim: 1 }],
                    lists,
                    1,
                )
            }
            // Unstack along dim.
            3 => (
                vec![Op::SplitModulelist { dim }],
                vec![Part::One(base.clone())],
                1,
            ),
            // Transpose (needs two dims).
            4 => {
                let mut s = base.clone();
                if rank == 1 {
                    s.push(2);
                }
                let d1 = (dim + 1) % s.len();
                (
                    vec![Op::Transpose {
                        dim0: dim,
                        dim1: d1,
                    }],
                    vec![Part::One(s)],
                    1,
                )
            }
            // Interleave n equal tensors.
            5 => (
                vec![Op::Interleave { dim }],
                vec![Part::One(base.clone()); n],
                1,
            ),
            // De-interleave one tensor into n.
            _ => {
                let mut s = base.clone();
                s[dim] *= n;
                (vec![Op::Deinterleave { dim }], vec![Part::One(s)], n)
            }
        }
    })
}

proptest! {
    #[test]
    fn every_op_round_trips((ops, inputs, n_targets) in case(), seed in 0u32..1000) {
        let mut stage: Shapes = inputs.clone();
        let mut steps = Vec::new();
        let mut stages = vec![stage.clone()];
        for op in &ops {
            let (step, out) = forward_step(op, &stage, n_targets).unwrap();
            steps.push(step);
            stage = out;
            stages.push(stage.clone());
        }
        let mut k = 0f32;
        let tensors: Vec<Part<Tensor>> = inputs
            .iter()
            .map(|s| s.mapped(|shape| { k += 1000.0; t(shape, k + seed as f32) }))
            .collect();
        let out = run_steps(&steps, tensors.clone()).unwrap();
        // The shapes the planner predicted are the shapes produced.
        let produced: Shapes = out.iter().map(|s| s.mapped(|t| t.dims().to_vec())).collect();
        prop_assert_eq!(&produced, stages.last().unwrap());
        let reverse: Vec<Step> = steps.iter().enumerate().rev().map(|(i, s)| s.reverse(&stages[i])).collect();
        let back = run_steps(&reverse, out).unwrap();
        prop_assert_eq!(back.len(), tensors.len());
        for (a, b) in back.iter().zip(&tensors) {
            let (a, b) = (a.items(), b.items());
            prop_assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                prop_assert_eq!(x.dims(), y.dims());
                prop_assert_eq!(
                    x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                );
            }
        }
    }
}
