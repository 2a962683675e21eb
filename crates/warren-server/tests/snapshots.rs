//! Issue #8's filesystem snapshots through the API: snapshot-filesystem
//! into an image a new sandbox starts from (writes, deletions, renames,
//! replaced directories, owners, links), snapshot TTLs, directory
//! snapshots mounted into running and new sandboxes, and the error codes.
//! Our own `main` (libtest-mimic) because this binary is also the
//! sandboxes' init.

use anyhow::{ensure, Context, Result};
use axum::http::StatusCode;
use libtest_mimic::Arguments;
use serde_json::{json, Value};

#[macro_use]
mod common;

use common::{code, env, trial, Env};

async fn sh(e: &Env, id: &str, script: &str) -> Result<String> {
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"command": ["/bin/sh", "-c", script], "timeout_secs": 60})),
        )
        .await?;
    ensure!(s == StatusCode::OK, "exec: {s} {v}");
    ensure!(
        v["exit_code"] == 0,
        "{script}: exit {} stderr {}",
        v["exit_code"],
        v["stderr"]
    );
    Ok(v["stdout"].as_str().unwrap_or_default().to_string())
}

/// Every entry under the given roots with type, mode, owner, size, link
/// target and content checksum: what "exactly that state" compares.
const LISTING: &str = "cd / && find etc srv root home opt -xdev 2>/dev/null | sort | while read -r p; do \
     if [ -L \"$p\" ]; then echo \"$p L $(stat -c '%a %u:%g' \"$p\") -> $(readlink \"$p\")\"; \
     elif [ -f \"$p\" ]; then echo \"$p F $(stat -c '%a %u:%g %s %h' \"$p\") $(md5sum < \"$p\" | cut -c1-32)\"; \
     else echo \"$p $(stat -c '%F %a %u:%g' \"$p\")\"; fi; done";

async fn snapshot(e: &Env, id: &str, body: Value) -> Result<Value> {
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{id}/snapshot-filesystem"),
            Some(body),
        )
        .await?;
    ensure!(s == StatusCode::CREATED, "snapshot: {s} {v}");
    Ok(v)
}

async fn filesystem_snapshot_round_trip() -> Result<()> {
    let e = env().await?;
    let src = e.create(json!({"timeout_secs": 120})).await?;
    // Changes of every kind, over the image's own files and new ones.
    sh(
        &e,
        &src,
        "set -e
         mkdir -p /srv/app/sub /srv/gone /opt/replaced/old
         echo one > /srv/app/a.txt; echo two > /srv/app/sub/b.txt
         echo bye > /srv/gone/x; echo old > /opt/replaced/old/f
         rm /etc/mime.types                      # a file of the image: whiteout
         mv /srv/app/a.txt /srv/app/renamed.txt  # file rename
         mv /srv/app/sub /srv/app/moved          # directory rename
         rm -r /srv/gone                         # a new dir, then removed
         rm -r /opt/replaced; mkdir -p /opt/replaced/new; echo new > /opt/replaced/new/f
         ln -s renamed.txt /srv/app/link; ln /srv/app/moved/b.txt /srv/app/hard
         echo secret > /srv/app/owned; chown 1000:1000 /srv/app/owned; chmod 640 /srv/app/owned
         chmod 4755 /srv/app/moved
         head -c 3000000 /dev/urandom > /home/big.bin",
    )
    .await?;
    // A writer keeps going through the snapshot.
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{src}/execs"),
            Some(json!({"command": ["/bin/sh", "-c", "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); echo $i >> /srv/counter; done"]})),
        )
        .await?;
    ensure!(
        s == StatusCode::CREATED || s == StatusCode::OK,
        "writer: {s} {v}"
    );
    let before = sh(&e, &src, &format!("{LISTING} | grep -v counter")).await?;
    let snap = snapshot(&e, &src, json!({"name": "snaptest:v1"})).await?;
    let image_id = snap["image_id"].as_str().context("image_id")?.to_string();
    ensure!(snap["layer_entries"].as_u64() > Some(10), "{snap}");
    ensure!(
        snap["frozen_ms"].as_f64() <= snap["took_ms"].as_f64(),
        "{snap}"
    );

    // The source keeps running, unchanged.
    let after = sh(&e, &src, &format!("{LISTING} | grep -v counter")).await?;
    ensure!(
        before == after,
        "the source changed:\n{before}\n---\n{after}"
    );
    let lines = |s: String| s.trim().parse::<u64>().unwrap_or(0);
    let n1 = lines(sh(&e, &src, "wc -l < /srv/counter").await?);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let n2 = lines(sh(&e, &src, "wc -l < /srv/counter").await?);
    ensure!(
        n1 > 0 && (n2 > n1 || n2 == 100_000),
        "the writer stopped: {n1} then {n2}"
    );

    // New sandboxes from the name and from the id see exactly that state.
    for image in ["snaptest:v1", image_id.as_str()] {
        let copy = e
            .create(json!({"image": image, "timeout_secs": 60}))
            .await?;
        let seen = sh(&e, &copy, &format!("{LISTING} | grep -v counter")).await?;
        ensure!(seen == before, "{image}: differs\n{before}\n---\n{seen}");
        ensure!(
            sh(&e, &copy, "test ! -e /etc/mime.types && test ! -e /srv/gone && test ! -e /opt/replaced/old && cat /srv/app/link").await?
                == "one\n",
            "deletions or links"
        );
        // A snapshot of a snapshot stacks another layer.
        sh(&e, &copy, "echo third > /srv/third").await?;
        let snap2 = snapshot(&e, &copy, json!({})).await?;
        // Unnamed snapshots get a name, so image GC keeps them.
        ensure!(
            snap2["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("snapshot-")),
            "{snap2}"
        );
        let (s, v) = e.admin("POST", "/v1/images/gc", None).await?;
        ensure!(s == StatusCode::OK, "gc: {s} {v}");
        let third = e
            .create(json!({"image": snap2["image_id"], "timeout_secs": 60}))
            .await?;
        ensure!(sh(&e, &third, "cat /srv/third /srv/app/moved/b.txt").await? == "third\ntwo\n");
    }
    e.teardown().await;
    Ok(())
}

async fn snapshot_ttl_and_errors() -> Result<()> {
    let e = env().await?;
    let id = e.create(json!({"timeout_secs": 60})).await?;
    sh(&e, &id, "echo x > /srv/x").await?;

    // A TTL: gone after it passes, but not while a sandbox uses it.
    let snap = snapshot(&e, &id, json!({"ttl_secs": 1})).await?;
    ensure!(snap["expires_at"].is_string(), "{snap}");
    let img = snap["image_id"].as_str().context("id")?.to_string();
    let user = e.create(json!({"image": img, "timeout_secs": 60})).await?;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (s, _) = e.admin("GET", &format!("/v1/images/{img}"), None).await?;
    ensure!(s == StatusCode::OK, "removed while in use: {s}");
    e.admin("POST", &format!("/v1/sandboxes/{user}/terminate"), None)
        .await?;
    let mut gone = false;
    for _ in 0..100 {
        let (s, _) = e.admin("GET", &format!("/v1/images/{img}"), None).await?;
        if s == StatusCode::NOT_FOUND {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    ensure!(gone, "an expired image was kept");

    // Bad input has stable codes.
    let path = format!("/v1/sandboxes/{id}/snapshot-filesystem");
    for (body, want) in [
        (json!({"ttl_secs": 0}), "invalid_argument"),
        (json!({"bogus": 1}), "invalid_json"),
        (json!({"name": "Not A Name!"}), "invalid_image_reference"),
    ] {
        let (s, v) = e.admin("POST", &path, Some(body.clone())).await?;
        ensure!(code(&v) == want, "{body}: {s} {v}");
    }
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{id}/snapshot-directory"),
            Some(json!({"path": "relative"})),
        )
        .await?;
    ensure!(code(&v) == "invalid_argument", "{s} {v}");
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{id}/snapshot-directory"),
            Some(json!({"path": "/no/such/dir"})),
        )
        .await?;
    ensure!(s.is_client_error(), "{s} {v}");
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{id}/mounts"),
            Some(json!({"path": "/mnt/x", "image": "sha256:0000000000000000"})),
        )
        .await?;
    ensure!(s.is_client_error(), "{s} {v}");
    let (s, v) = e
        .admin("POST", "/v1/sandboxes/sb-nope/snapshot-filesystem", None)
        .await?;
    ensure!(code(&v) == "sandbox_not_found", "{s} {v}");
    e.admin("POST", &format!("/v1/sandboxes/{id}/terminate"), None)
        .await?;
    let (s, v) = e.admin("POST", &path, None).await?;
    ensure!(code(&v) == "sandbox_terminated", "{s} {v}");
    e.teardown().await;
    Ok(())
}

async fn directory_snapshots_mount_into_sandboxes() -> Result<()> {
    let e = env().await?;
    let id = e.create(json!({"timeout_secs": 60})).await?;
    sh(
        &e,
        &id,
        "mkdir -p /srv/data/deep && echo cached > /srv/data/deep/f && echo top > /srv/data/t \
         && chown 1000 /srv/data/t && ln -s deep/f /srv/data/l && echo outside > /srv/other",
    )
    .await?;
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{id}/snapshot-directory"),
            Some(json!({"path": "/srv/data", "name": "datadir"})),
        )
        .await?;
    ensure!(s == StatusCode::CREATED, "{s} {v}");

    // Into a running sandbox.
    let other = e.create(json!({"timeout_secs": 60})).await?;
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{other}/mounts"),
            Some(json!({"path": "/mnt/data", "image": "datadir"})),
        )
        .await?;
    ensure!(s == StatusCode::OK, "{s} {v}");
    ensure!(v["mounts"][0]["path"] == "/mnt/data", "{v}");
    let seen = sh(
        &e,
        &other,
        "cat /mnt/data/deep/f /mnt/data/t /mnt/data/l; stat -c %u /mnt/data/t; \
         test ! -e /mnt/data/other && test ! -e /mnt/srv && echo only-the-dir; \
         echo no > /mnt/data/new 2>/dev/null || echo read-only",
    )
    .await?;
    ensure!(
        seen == "cached\ntop\ncached\n1000\nonly-the-dir\nread-only\n",
        "{seen}"
    );

    // Into a new sandbox, at create.
    let fresh = e
        .create(
            json!({"timeout_secs": 60, "mounts": [{"path": "/work/cache", "image": "datadir"}]}),
        )
        .await?;
    ensure!(sh(&e, &fresh, "cat /work/cache/deep/f").await? == "cached\n");
    let (_, v) = e
        .admin("GET", &format!("/v1/sandboxes/{fresh}"), None)
        .await?;
    ensure!(v["mounts"][0]["image"] == "datadir", "{v}");
    // A mounted image cannot be removed while mounted.
    let (s, v) = e.admin("DELETE", "/v1/images/datadir", None).await?;
    ensure!(code(&v) == "image_in_use", "{s} {v}");
    e.teardown().await;
    Ok(())
}

fn main() {
    warren_init::run_if_init();
    common::init_logging();
    let args = Arguments::from_args();
    let tests = vec![
        t!(filesystem_snapshot_round_trip),
        t!(snapshot_ttl_and_errors),
        t!(directory_snapshots_mount_into_sandboxes),
    ];
    libtest_mimic::run(&args, tests).exit();
}
