//! The mount point changed under a mounted value: its directory moved away
//! (its parent renamed, as a tool cleaning up a temporary tree might), or
//! somebody else's filesystem mounted over it. Teardown finds our mount by
//! its identity, never by the path alone, and never unmounts theirs.
//! (tests/fault_busy.rs has the lazy unmount by someone else.)

mod common;

use common::{Fixture, assert_no_records, fixture_qemu, is_mount_point, run};
use diskmount::{Backend, Fuse, Loop, Step, adopt};

fn moved_parent<B: Backend>() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("f", "x")]);
    let parent = fx.tree("parent", &[]);
    let mnt = parent.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let t = common::mount_whole::<B>(&img, &mnt);
    std::fs::write(t.path().join("written"), "after the move").unwrap();
    let moved = fx.path().join("moved");
    std::fs::rename(&parent, &moved).unwrap();
    assert!(is_mount_point(&moved.join("mnt")));
    // Flushed through the held root, unmounted where it now is.
    let result = t.close();
    assert!(
        !is_mount_point(&moved.join("mnt")),
        "the moved mount is left"
    );
    assert!(fixture_qemu(&fx).is_empty());
    fx.assert_clean();
    assert_no_records(&fx);
    result.unwrap();
    assert_eq!(
        run(std::process::Command::new("debugfs")
            .args(["-R", "cat /written"])
            .arg(&img)),
        "after the move"
    );
}

#[test]
fn parent_of_the_mount_point_renamed_loop() {
    moved_parent::<Loop>();
}

#[test]
fn parent_of_the_mount_point_renamed_fuse() {
    moved_parent::<Fuse>();
}

/// Somebody mounts a tmpfs over our mount point: our teardown flushes ours
/// but must not unmount the path (that would take theirs): it reports it.
/// Once they unmount theirs, adopting the path tears ours down.
#[test]
fn somebody_elses_mount_stacked_over_ours_is_left_alone() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("f", "x")]);
    let mnt = fx.tree("mnt", &[]);
    let t = common::mount_whole::<Loop>(&img, &mnt);
    std::fs::write(t.path().join("written"), "under theirs").unwrap();
    run(std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "theirs"])
        .arg(&mnt));
    std::fs::write(mnt.join("theirs"), "theirs").unwrap();
    let err = t.close().unwrap_err();
    assert_eq!(err.step(), Some(Step::Unmount), "{err}");
    assert_eq!(err.path(), Some(mnt.as_path()), "{err}");
    assert!(err.to_string().contains("no longer shows"), "{err}");
    assert_eq!(
        std::fs::read_to_string(mnt.join("theirs")).unwrap(),
        "theirs"
    );
    common::system::umount(&mnt);
    // Ours is there again, flushed; adopting it finishes the teardown.
    assert_eq!(
        std::fs::read_to_string(mnt.join("written")).unwrap(),
        "under theirs"
    );
    adopt(&mnt).unwrap().close().unwrap();
    fx.assert_clean();
    assert_eq!(
        run(std::process::Command::new("debugfs")
            .args(["-R", "cat /written"])
            .arg(&img)),
        "under theirs"
    );
}
