//! Ceph RBD images on this host: a real single-node cluster
//! (tests/common/ceph.rs, one per run of this binary) and images made with
//! the `rbd` tool from files made by mkfs and sfdisk.

mod common;

use common::Fixture;
use common::ceph::{self, Cluster};

/// The cluster itself: an image imported with `rbd import` and a
/// snapshot come back byte for byte with `rbd export`, and the key of the
/// test user lists the pool.
#[test]
fn the_test_cluster_serves_images_and_snapshots() {
    let mut fx = Fixture::new();
    let c = ceph::cluster();
    let img = fx.ext4("cluster.img", &[("hello.txt", "hello from rbd\n")]);
    c.import(&img, "cluster");
    c.snap("cluster", "s1");
    let back = fx.path().join("back.img");
    c.export("cluster@s1", &back);
    assert_eq!(std::fs::read(&img).unwrap(), std::fs::read(&back).unwrap());
    let ls = c.rbd(&["ls", ceph::POOL]);
    assert!(ls.lines().any(|l| l == "cluster"), "{ls}");
    let right = std::process::Command::new("rbd")
        .env("CEPH_CONF", &c.conf)
        .args(["--id", ceph::USER, "--keyring"])
        .arg(&c.keyring)
        .args(["ls", ceph::POOL])
        .output()
        .unwrap();
    assert!(
        right.status.success(),
        "{}",
        String::from_utf8_lossy(&right.stderr)
    );
    assert!(!Cluster::leaks_key(&String::from_utf8_lossy(&right.stdout)));
    fx.assert_clean();
}

/// The Rbd backend on a kernel without the rbd driver (this host): a
/// clear one-line refusal naming the URL, nothing left, no key in it; Auto
/// then picks another backend.
#[test]
fn rbd_backend_without_krbd_refuses_clearly() {
    let mut fx = Fixture::new();
    let c = ceph::cluster();
    let url = c.url("nokrbd", None);
    let image = diskmount::Image::url(&url).unwrap();
    if diskmount::backend::rbd::available() {
        // The VM lane's kernel: kernel_lane covers krbd there.
        assert_eq!(diskmount::Auto::choose(&image), diskmount::BackendKind::Rbd);
        fx.assert_clean();
        return;
    }
    assert_ne!(diskmount::Auto::choose(&image), diskmount::BackendKind::Rbd);
    let e = diskmount::Unattached::<diskmount::Rbd>::new(image)
        .attach()
        .unwrap_err();
    assert_eq!(e.kind(), diskmount::ErrorKind::KernelFeatureMissing, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("no rbd driver") && text.contains("rbd://"),
        "{text}"
    );
    assert!(!text.contains('\n') && !Cluster::leaks_key(&text), "{text}");
    fx.assert_clean();
}
