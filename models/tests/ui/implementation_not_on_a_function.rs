#[patchwork_models::attention_implementation("mine")]
pub struct NotAFunction;

fn main() {}
