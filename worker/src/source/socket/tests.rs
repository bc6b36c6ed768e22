use super::*;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn lines_arrive_as_rows_and_are_released_on_commit() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let source = SocketSource::new(
        "lines",
        &SocketSourceSpec {
            host: "127.0.0.1".into(),
            port,
        },
    );
    let mut task = source.open(0, &[]).await.expect("open");
    let (mut server, _) = listener.accept().await.expect("accept");
    server.write_all(b"a b\nc\n").await.expect("write");
    server.flush().await.expect("flush");

    for _ in 0..200 {
        if task.backlog() == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let range = task
        .plan(PlanLimit::PerTrigger)
        .await
        .expect("plan")
        .expect("two lines arrived");
    assert_eq!(range, serde_json::json!({"start": 0, "end": 2}));
    let out = task.read(&range).await.expect("read");
    let values = out.batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("utf8");
    assert_eq!(
        values.iter().flatten().collect::<Vec<_>>(),
        vec!["a b", "c"]
    );
    task.committed(&range);
    assert!(
        task.read(&range).await.is_err(),
        "committed lines are released"
    );
}
