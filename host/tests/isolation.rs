//! Every request runs in a fresh interpreter: state a request leaves behind
//! is never seen by the next one.

mod common;

use common::{get, handler, json, ok};
use serde_json::json;

async fn same_answer_every_time(target: &str, expected: serde_json::Value) {
    let h = handler("isolation");
    for attempt in 0..3 {
        let exchange = get(&h, target).await;
        assert_eq!(
            json(ok(&exchange)),
            expected,
            "{target}, request #{attempt}"
        );
    }
}

#[tokio::test]
async fn module_global_counter_restarts_every_request() {
    same_answer_every_time("/counter", json!({"counter": 1})).await;
}

#[tokio::test]
async fn builtins_mutation_does_not_leak() {
    same_answer_every_time("/builtins", json!({"seen": null})).await;
}

#[tokio::test]
async fn sys_modules_mutation_does_not_leak() {
    same_answer_every_time("/modules", json!({"seen": false})).await;
}

#[tokio::test]
async fn class_attribute_mutation_does_not_leak() {
    same_answer_every_time("/class", json!({"seen": "pristine"})).await;
}

#[tokio::test]
async fn lru_cache_starts_empty_every_request() {
    same_answer_every_time("/cache", json!({"hits": 0, "misses": 0, "size": 0})).await;
}

#[tokio::test]
async fn concurrent_requests_do_not_share_state() {
    let h = handler("isolation");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { get(&h, "/counter").await })
        })
        .collect();
    for task in tasks {
        let exchange = task.await.unwrap();
        assert_eq!(json(ok(&exchange)), json!({"counter": 1}));
    }
}
