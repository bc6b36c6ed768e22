use super::*;

#[test]
fn budgets_parse_with_binary_suffixes() {
    assert_eq!(parse_budget("512M").ok(), Some(512 << 20));
    assert_eq!(parse_budget("512m").ok(), Some(512 << 20));
    assert_eq!(parse_budget("1G").ok(), Some(1 << 30));
    assert_eq!(parse_budget(" 2 GiB ").ok(), Some(2 << 30));
    assert_eq!(parse_budget("64Ki").ok(), Some(64 << 10));
    assert_eq!(parse_budget("1T").ok(), Some(1 << 40));
    assert_eq!(parse_budget("268435456").ok(), Some(268_435_456));
    assert_eq!(parse_budget("100B").ok(), Some(100));
    for bad in [
        "",
        "M",
        "0",
        "0G",
        "1.5G",
        "512MB",
        "-1",
        "9999999999999999999T",
        "lots",
    ] {
        let err = parse_budget(bad).expect_err(bad);
        assert!(matches!(err, EngineError::Config(_)), "{bad}: {err}");
        assert!(err.to_string().contains("--memory-budget"), "{err}");
    }
}

#[test]
fn the_default_is_half_the_limit_or_256_mib_without_one() {
    assert_eq!(budget_for_limit(Some(1 << 30)), 512 << 20);
    assert_eq!(budget_for_limit(Some(1)), 1);
    assert_eq!(budget_for_limit(None), 256 << 20);
}

#[test]
fn limit_values_max_and_v1_unlimited_are_no_limit() {
    assert_eq!(parse_limit("max\n"), Ok(None));
    assert_eq!(parse_limit("536870912\n"), Ok(Some(512 << 20)));
    assert_eq!(
        parse_limit("9223372036854771712\n"),
        Ok(None),
        "v1 unlimited"
    );
    assert!(parse_limit("lots").is_err());
    assert!(parse_limit("").is_err());
}

fn write(root: &std::path::Path, relative: &str, text: &str) {
    let file = root.join(relative);
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(file, text).expect("write");
}

#[test]
fn cgroup_v2_limit_of_own_cgroup_then_of_the_namespace_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    // A pod's cgroup as the host sees it, and the namespace root a container sees.
    write(root, "kubepods/pod1/c1/memory.max", "1073741824\n");
    write(root, "memory.max", "max\n");
    assert_eq!(
        container_limit(root, "0::/kubepods/pod1/c1\n").expect("limit"),
        Some(1 << 30)
    );
    // Inside its own cgroup namespace the container's path is `/`: the root's file.
    assert_eq!(container_limit(root, "0::/\n").expect("limit"), None);
    write(root, "memory.max", "268435456\n");
    assert_eq!(
        container_limit(root, "0::/\n").expect("limit"),
        Some(256 << 20)
    );
    // A path that does not exist here falls back to the root's file.
    assert_eq!(
        container_limit(root, "0::/elsewhere\n").expect("limit"),
        Some(256 << 20)
    );
}

#[test]
fn cgroup_v1_memory_controller_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let self_cgroup =
        "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n";
    write(
        root,
        "memory/docker/abc/memory.limit_in_bytes",
        "536870912\n",
    );
    assert_eq!(
        container_limit(root, self_cgroup).expect("limit"),
        Some(512 << 20)
    );
    // Inside the container the memory hierarchy is mounted at its own cgroup.
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "memory/memory.limit_in_bytes",
        "9223372036854771712\n",
    );
    assert_eq!(
        container_limit(dir.path(), self_cgroup).expect("limit"),
        None
    );
}

#[test]
fn no_cgroup_files_is_no_limit_and_a_garbled_one_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(container_limit(dir.path(), "").expect("limit"), None);
    assert_eq!(container_limit(dir.path(), "0::/x\n").expect("limit"), None);
    write(dir.path(), "memory.max", "a lot\n");
    let err = container_limit(dir.path(), "0::/\n").expect_err("garbled");
    assert!(matches!(err, EngineError::Config(_)), "{err}");
    assert!(err.to_string().contains("memory.max"), "{err}");
}

#[test]
fn read_sizes_follow_the_share() {
    const MIB: u64 = 1 << 20;
    let max_chunk = 8 << 20;
    // The bench's filter query: 256 MiB over 2 tasks.
    assert_eq!(
        ReadSizes::for_share(128 * MIB, 2, max_chunk),
        ReadSizes {
            batch_bytes: 32 * MIB,
            chunk_bytes: 2 << 20,
            files_at_once: 2,
        }
    );
    // A small share: smaller chunks, one file at a time, the input floor.
    assert_eq!(
        ReadSizes::for_share(2 * MIB, 4, max_chunk),
        ReadSizes {
            batch_bytes: MIB,
            chunk_bytes: 256 << 10,
            files_at_once: 1,
        }
    );
    // A large share: the decoder's own chunk, every core.
    let large = ReadSizes::for_share(8 << 30, 4, max_chunk);
    assert_eq!(large.batch_bytes, 2 << 30);
    assert_eq!(large.chunk_bytes, max_chunk);
    assert_eq!(large.files_at_once, 4);
}
