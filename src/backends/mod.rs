//! Built-in backends. Each registers through the same path a host uses.

pub mod echo;
pub mod synthetic;

use crate::registry::BackendRegistry;

/// Adds `echo` and `synthetic` to `registry`.
pub fn register_builtins(registry: &mut BackendRegistry) {
    registry.register(
        "echo",
        "returns each row unchanged; for testing order and overhead",
        echo::create,
    );
    registry.register(
        "synthetic",
        "a stand-in model with configurable load time, cost, result size and failures",
        synthetic::create,
    );
}
