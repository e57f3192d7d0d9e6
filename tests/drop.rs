//! Dropping a lifecycle value at any state tears down everything it owns,
//! also while a panic unwinds.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use common::{Fixture, is_mount_point};
use diskmount::{Format, Image, Loop, MountOptions, Partition, Unattached};

#[derive(Clone, Copy, Debug)]
enum State {
    Attached,
    Mapped,
    Mounted,
}

const STATES: [State; 3] = [State::Attached, State::Mapped, State::Mounted];

/// Takes a fresh image to `state` and returns it type-erased, so dropping
/// the box drops the state.
fn reach(fx: &Fixture, state: State) -> Box<dyn std::any::Any> {
    let img = fx.ext4(&format!("{state:?}.img"), &[("f", "x")]);
    let mnt = fx.tree(&format!("{state:?}.mnt"), &[]);
    let a = Unattached::<Loop>::new(Image::file(img, Format::Raw).unwrap())
        .attach()
        .unwrap();
    match state {
        State::Attached => Box::new(a),
        State::Mapped => Box::new(a.map(Partition::Whole).unwrap()),
        State::Mounted => {
            let t = a
                .map(Partition::Whole)
                .unwrap()
                .mount(&mnt, &MountOptions::default())
                .unwrap();
            assert!(is_mount_point(&mnt));
            Box::new(t)
        }
    }
}

#[test]
fn drop_at_each_state_leaves_nothing() {
    let mut fx = Fixture::new();
    for state in STATES {
        let held = reach(&fx, state);
        assert!(!fx.leaks().is_empty(), "{state:?} should hold a device");
        drop(held);
        assert!(fx.leaks().is_empty(), "{state:?}: {:?}", fx.leaks());
    }
    fx.assert_clean();
}

#[test]
fn panic_while_holding_each_state_leaves_nothing() {
    let mut fx = Fixture::new();
    for state in STATES {
        let result = catch_unwind(AssertUnwindSafe(|| {
            let _held = reach(&fx, state);
            panic!("boom while {state:?}");
        }));
        let payload = result.expect_err("the panic must propagate");
        assert_eq!(
            payload.downcast_ref::<String>().map(String::as_str),
            Some(format!("boom while {state:?}").as_str())
        );
        assert!(fx.leaks().is_empty(), "{state:?}: {:?}", fx.leaks());
    }
    fx.assert_clean();
}

#[test]
fn error_propagated_with_question_mark_tears_down() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[]);
    let mnt = fx.tree("mnt", &[]);
    let missing = fx.path().join("no-such-dir");
    let attempt = || -> diskmount::Result<()> {
        let mounted = Unattached::<Loop>::new(Image::file(&img, Format::Raw)?)
            .attach()?
            .map(Partition::Whole)?
            .mount(&mnt, &MountOptions::default())?;
        // A second mount that fails: `?` returns and `mounted` drops.
        let _second = Unattached::<Loop>::new(Image::file(&img, Format::Raw)?.read_only(true))
            .attach()?
            .map(Partition::Whole)?
            .mount(&missing, &MountOptions::default())?;
        drop(mounted);
        Ok(())
    };
    let err = attempt().unwrap_err();
    // The read-only second attach is refused: the image is in use read-write.
    assert_eq!(err.step(), Some(diskmount::Step::Attach), "{err}");
    assert!(!is_mount_point(&mnt));
    fx.assert_clean();
}
