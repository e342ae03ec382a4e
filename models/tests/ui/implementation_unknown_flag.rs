use patchwork_models::implementations::ExpertsInput;

/// `weights` is an attention flag.
#[patchwork_models::experts_implementation("mine", weights)]
pub fn mine(input: &ExpertsInput<'_>) -> candle_core::Result<candle_core::Tensor> {
    Ok(input.x.clone())
}

fn main() {}
