//! `RowQuantizer`: a weight quantized a few rows at a time is the weight quantized whole, bit
//! for bit, in every format; and it refuses chunks that do not add up to the matrix.

use candle_core::{DType, Device, Tensor};
use patchwork_quant::{Format, QuantizedWeight, RowQuantizer};

/// A `[rows, cols]` matrix of varied values (no two rows alike, signs mixed).
fn matrix(rows: usize, cols: usize) -> Tensor {
    let v: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * (1.0 + (i / cols) as f32))
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

fn values(w: &QuantizedWeight) -> Vec<u32> {
    let t = w.dequantize().unwrap();
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    v.into_iter().map(f32::to_bits).collect()
}

#[test]
fn rows_in_chunks_quantize_as_the_whole_matrix() {
    let (rows, cols) = (37, 512);
    let w = matrix(rows, cols);
    for format in Format::ALL {
        let whole = QuantizedWeight::quantize(&w, format).unwrap();
        for chunk in [1, 5, 16, 37] {
            let mut q = RowQuantizer::new(format, rows, cols).unwrap();
            let mut at = 0;
            while at < rows {
                let n = chunk.min(rows - at);
                // A view at an offset of the whole matrix, as a chunk of a bank arrives.
                q.push(&w.narrow(0, at, n).unwrap()).unwrap();
                at += n;
            }
            let chunked = q.finish().unwrap();
            assert_eq!(chunked.format(), format);
            assert_eq!(chunked.dims(), (rows, cols));
            assert!(
                values(&chunked) == values(&whole),
                "{format}, chunks of {chunk}"
            );
        }
    }
}

#[test]
fn half_precision_chunks_are_converted() {
    let w = matrix(8, 64).to_dtype(DType::BF16).unwrap();
    let mut q = RowQuantizer::new(Format::Q8_0, 8, 64).unwrap();
    q.push(&w.narrow(0, 0, 3).unwrap()).unwrap();
    q.push(&w.narrow(0, 3, 5).unwrap()).unwrap();
    let whole = QuantizedWeight::quantize(&w.to_dtype(DType::F32).unwrap(), Format::Q8_0).unwrap();
    assert!(values(&q.finish().unwrap()) == values(&whole));
}

#[test]
fn chunks_that_do_not_make_the_matrix_are_errors() {
    let w = matrix(4, 64);
    let mut q = RowQuantizer::new(Format::Q4_0, 4, 64).unwrap();
    q.push(&w.narrow(0, 0, 3).unwrap()).unwrap();
    let err = q.push(&w).unwrap_err().to_string();
    assert!(
        err.contains("rows 3..7 of [4, 64] given as [4, 64]"),
        "{err}"
    );
    let err = q.finish().unwrap_err().to_string();
    assert!(err.contains("3 of 4 rows of [4, 64] given"), "{err}");
    let err = RowQuantizer::new(Format::Q4K, 4, 64)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blocks of 256") && err.contains("[4, 64]"),
        "{err}"
    );
    let err = RowQuantizer::new(Format::Q8_0, usize::MAX, 64)
        .unwrap_err()
        .to_string();
    assert!(err.contains("too large to allocate"), "{err}");
    let mut q = RowQuantizer::new(Format::Q8_0, 4, 64).unwrap();
    let err = q.push(&matrix(2, 32)).unwrap_err().to_string();
    assert!(err.contains("given as [2, 32]"), "{err}");
}

#[test]
fn a_quantized_table_looks_up_the_rows_of_its_dequantized_self() {
    use patchwork_models::decoder::{PassContext, TokenEmbedding};
    use patchwork_quant::QuantizedEmbedding;
    let table = matrix(40, 256);
    for format in [Format::Q8_0, Format::Q4K, Format::Q5_0, Format::F16] {
        let mut q = RowQuantizer::ggml(format, 40, 256).unwrap();
        q.push(&table.narrow(0, 0, 17).unwrap()).unwrap();
        q.push(&table.narrow(0, 17, 23).unwrap()).unwrap();
        let embedding =
            QuantizedEmbedding::from_qtensor(std::sync::Arc::new(q.finish_qtensor().unwrap()))
                .unwrap();
        let whole = embedding.table().unwrap();
        // The blocks are the whole matrix's: the same values QuantizedWeight holds.
        let weight = QuantizedWeight::quantize(&table, format).unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(f32::to_bits)
                .collect()
        };
        assert!(bits(&whole) == values(&weight), "{format}");
        let ids = Tensor::new(&[[3u32, 39, 0], [3, 12, 7]], &Device::Cpu).unwrap();
        let looked_up = embedding.forward(&ids, &PassContext::default()).unwrap();
        assert_eq!(looked_up.dims(), [2, 3, 256]);
        let expected = whole
            .index_select(&ids.flatten_all().unwrap(), 0)
            .unwrap()
            .reshape((2, 3, 256))
            .unwrap();
        assert!(bits(&looked_up) == bits(&expected), "{format}");
        let err = embedding
            .forward(
                &Tensor::new(&[40u32], &Device::Cpu).unwrap(),
                &PassContext::default(),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("token id 40 is not below the vocabulary size 40"),
            "{err}"
        );
    }
}

#[test]
fn siblings_computed_in_one_pass_equal_each_alone() {
    let parts = [matrix(24, 256), matrix(8, 256), matrix(12, 256)];
    for format in [Format::Q8_0, Format::Q4_0, Format::Q6K] {
        let weights: Vec<QuantizedWeight> = parts
            .iter()
            .map(|w| QuantizedWeight::quantize(w, format).unwrap())
            .collect();
        let refs: Vec<&QuantizedWeight> = weights.iter().collect();
        let bias = Tensor::arange(0f32, 44.0, &Device::Cpu).unwrap();
        // One token (integer dot products) and seven (the widened float path).
        for m in [1, 7] {
            let x = matrix(m, 256).reshape((1, m, 256)).unwrap();
            let together = QuantizedWeight::forward_many(&refs, &x, Some(&bias)).unwrap();
            let alone: Vec<Tensor> = weights
                .iter()
                .map(|w| w.forward(&x, None).unwrap())
                .collect();
            let alone = Tensor::cat(&alone, 2)
                .unwrap()
                .broadcast_add(&bias)
                .unwrap();
            assert_eq!(together.dims(), [1, m, 44]);
            let bits = |t: &Tensor| -> Vec<u32> {
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .into_iter()
                    .map(f32::to_bits)
                    .collect()
            };
            assert!(bits(&together) == bits(&alone), "{format}, {m} tokens");
        }
    }
}
