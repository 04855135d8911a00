//! Built-in backends. Each registers through the same path a host uses.

pub mod echo;
#[cfg(feature = "embedding")]
pub mod embedding;
pub mod openai;
pub mod openai_http;
pub mod python;
pub mod sheaf;
pub mod synthetic;
pub(crate) mod vectors;

use crate::registry::BackendRegistry;

/// Adds the built-in backends to `registry`.
pub fn register_builtins(registry: &mut BackendRegistry) {
    registry.register(
        "echo",
        "returns each row unchanged; for testing order and overhead",
        echo::create,
    );
    #[cfg(feature = "embedding")]
    registry.register(
        "embedding",
        "sentence embeddings from a sentence-transformers BERT folder (all-MiniLM-L6-v2), candle on CPU or CUDA",
        embedding::create,
    );
    registry.register(
        "openai-http",
        "sends rows to an OpenAI-compatible server (vLLM, TEI, infinity, OpenAI): OpenAI Batch lines or texts to embed",
        openai_http::create,
    );
    registry.register(
        "python",
        "a Python class in worker processes (Ray Data's map_batches style), batches read in place from shared memory",
        python::create,
    );
    registry.register(
        "sheaf",
        "a sheaf-serve ModelBackend (built in or your own) in Python workers: BatchRunner's request and response lines",
        python::create_sheaf,
    );
    registry.register(
        "synthetic",
        "a stand-in model with configurable load time, cost, result size and failures",
        synthetic::create,
    );
}
