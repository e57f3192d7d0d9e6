//! Many threads attaching, mounting and tearing down at once never share a
//! device, never fail, and leave nothing behind.

mod common;

use std::collections::HashSet;
use std::sync::Mutex;

use common::Fixture;
use diskmount::{Format, Image, Loop, MountOptions, Partition, Unattached, with_mounted};

const THREADS: usize = 8;
const CYCLES: usize = 25;

#[test]
fn eight_threads_times_twenty_five_cycles() {
    let mut fx = Fixture::new();
    let images: Vec<_> = (0..THREADS)
        .map(|t| fx.ext4(&format!("disk{t}.img"), &[("id", &t.to_string())]))
        .collect();
    let mnts: Vec<_> = (0..THREADS)
        .map(|t| fx.tree(&format!("mnt{t}"), &[]))
        .collect();
    // device -> thread currently holding it; a second holder is a bug.
    let in_use = Mutex::new(HashSet::new());
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (img, mnt, in_use) = (&images[t], &mnts[t], &in_use);
            s.spawn(move || {
                let image = Image::file(img, Format::Raw).unwrap();
                for c in 0..CYCLES {
                    if c % 2 == 0 {
                        let m = Unattached::<Loop>::new(image.clone())
                            .attach()
                            .unwrap()
                            .map(Partition::Whole)
                            .unwrap()
                            .mount(mnt, &MountOptions::default())
                            .unwrap();
                        let dev = m.device().to_path_buf();
                        assert!(
                            in_use.lock().unwrap().insert(dev.clone()),
                            "{} given out twice",
                            dev.display()
                        );
                        assert_eq!(
                            std::fs::read_to_string(m.path().join("id")).unwrap(),
                            t.to_string()
                        );
                        std::fs::write(m.path().join(format!("cycle-{c}")), "x").unwrap();
                        in_use.lock().unwrap().remove(&dev);
                        m.close().unwrap();
                    } else {
                        with_mounted(&image, Partition::Whole, |root| {
                            std::fs::write(root.join(format!("cycle-{c}")), "x").unwrap();
                        })
                        .unwrap();
                    }
                }
            });
        }
    });
    fx.assert_clean();
    for (t, img) in images.iter().enumerate() {
        let image = Image::file(img, Format::Raw).unwrap().read_only(true);
        let n = with_mounted(&image, Partition::Whole, |root| {
            (0..CYCLES)
                .filter(|c| root.join(format!("cycle-{c}")).exists())
                .count()
        })
        .unwrap();
        assert_eq!(n, CYCLES, "image {t}");
    }
    fx.assert_clean();
}

#[test]
fn eight_threads_mapping_different_partitions_of_copies() {
    use diskmount::{MapOptions, MapStrategy};
    let mut fx = Fixture::new();
    let original = fx.mbr_image("mbr.img");
    let copies: Vec<_> = (0..THREADS)
        .map(|t| {
            let p = fx.path().join(format!("copy{t}.img"));
            std::fs::copy(&original, &p).unwrap();
            p
        })
        .collect();
    let numbers = [1, 2, 5, 6];
    std::thread::scope(|s| {
        for (t, img) in copies.iter().enumerate() {
            s.spawn(move || {
                let image = Image::file(img, Format::Raw).unwrap();
                let strategy = if t % 2 == 0 {
                    MapStrategy::Blkpg
                } else {
                    MapStrategy::OffsetLoop
                };
                for c in 0..5 {
                    let n = numbers[(t + c) % numbers.len()];
                    let got = Unattached::<Loop>::new(image.clone())
                        .attach()
                        .unwrap()
                        .map_with(
                            Partition::Number(n),
                            &MapOptions::default().strategy(strategy),
                        )
                        .unwrap();
                    let mnt = tempfile::tempdir().unwrap();
                    let m = got.mount(mnt.path(), &MountOptions::default()).unwrap();
                    assert_eq!(
                        std::fs::read_to_string(m.path().join("id")).unwrap(),
                        format!("p{n}")
                    );
                    m.close().unwrap();
                }
            });
        }
    });
    fx.assert_clean();
}

/// `Partition::Auto` looks for an OS with a read-only mount of its own and
/// then mounts read-write; while another thread of the program forks
/// children, each child holds a copy of that look's descriptors until it
/// execs, and the kernel refuses the read-write mount of the same device
/// with EBUSY ("would change RO state") until then. Before the mount step
/// waited that out, most of these cycles failed.
#[test]
fn mounting_after_the_os_look_while_another_thread_forks() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("id", "x")]);
    let image = Image::file(&img, Format::Raw).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                std::process::Command::new("true").status().unwrap();
            }
        });
        let failed: Vec<String> = (0..100)
            .filter_map(|i| {
                with_mounted(&image, Partition::Auto, |root| {
                    std::fs::write(root.join("n"), i.to_string()).unwrap();
                })
                .err()
                .map(|e| e.to_string())
            })
            .collect();
        stop.store(true, Ordering::Relaxed);
        assert!(
            failed.is_empty(),
            "{} failed: {:?}",
            failed.len(),
            failed.first()
        );
    });
    fx.assert_clean();
    let got = common::run(
        std::process::Command::new("debugfs")
            .args(["-R", "cat /n"])
            .arg(&img),
    );
    assert_eq!(got, "99");
}
