//! Tests of the paths that need kernel features this project's CI machines
//! lack: partition tables parsed by the kernel, and device-mapper. They run
//! for real in the kernel VM lane (`tests/vm/`, Debian's own kernel under
//! qemu); on a kernel without a feature they are reported by name as not
//! run here, never passed. In the lane (`DISKMOUNT_VM_LANE=1`) a missing
//! feature is a failure.
//!
//! Own harness: prints `kernel-lane: N passed, M failed, K skipped`.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::Command;

use common::{Fixture, kernel_has_device_mapper, kernel_parses_partitions, run};
use diskmount::{
    Adopted, Block, Format, Image, Loop, MapOptions, MapStrategy, Mapping, MountOptions, Partition,
    Unattached, adopt,
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Needs {
    PartitionParsers,
    DeviceMapper,
}

fn available(n: Needs) -> bool {
    match n {
        Needs::PartitionParsers => kernel_parses_partitions(),
        Needs::DeviceMapper => kernel_has_device_mapper(),
    }
}

/// Maps `partition` of `img` with `strategy`, mounts, reads `id`, closes.
fn read_id(
    img: &Path,
    partition: Partition,
    strategy: MapStrategy,
) -> (String, Mapping, std::path::PathBuf) {
    let mnt = tempfile::tempdir().unwrap();
    let m = Unattached::<Loop>::new(Image::file(img, Format::Raw).unwrap())
        .attach()
        .unwrap()
        .map_with(partition, &MapOptions::default().strategy(strategy))
        .unwrap();
    let (mapping, dev) = (m.mapping(), m.device().to_path_buf());
    let t = m.mount(mnt.path(), &MountOptions::default()).unwrap();
    let id = std::fs::read_to_string(t.path().join("id")).unwrap();
    t.close().unwrap();
    (id, mapping, dev)
}

fn kernel_nodes_for_every_mbr_partition() {
    let mut fx = Fixture::new();
    let img = fx.mbr_image("mbr.img");
    for n in [1, 2, 5, 6] {
        for strategy in [MapStrategy::KernelNode, MapStrategy::Auto] {
            let (id, mapping, dev) = read_id(&img, Partition::Number(n), strategy);
            assert_eq!(id, format!("p{n}"));
            assert_eq!(mapping, Mapping::KernelNode, "{strategy:?}");
            assert!(
                dev.to_string_lossy().ends_with(&format!("p{n}")),
                "{}",
                dev.display()
            );
        }
    }
    fx.assert_clean();
}

fn kernel_nodes_for_a_4096_byte_sector_gpt() {
    let mut fx = Fixture::new();
    let img = fx.gpt_image("gpt4k.img", 4096);
    let (id, mapping, _) = read_id(&img, Partition::Label("root".into()), MapStrategy::Auto);
    assert_eq!((id.as_str(), mapping), ("p2", Mapping::KernelNode));
    let (id, mapping, _) = read_id(&img, Partition::Auto, MapStrategy::KernelNode);
    assert_eq!((id.as_str(), mapping), ("p2", Mapping::KernelNode));
    fx.assert_clean();
}

fn device_mapper_for_primary_and_logical_partitions() {
    let mut fx = Fixture::new();
    let img = fx.mbr_image("mbr.img");
    for n in [1, 5] {
        let (id, mapping, dev) = read_id(&img, Partition::Number(n), MapStrategy::DeviceMapper);
        assert_eq!((id, mapping), (format!("p{n}"), Mapping::DeviceMapper));
        let name = dev.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            dev.starts_with("/dev/mapper")
                && name.starts_with("loop")
                && name.ends_with(&format!("p{n}"))
        );
        assert!(!dev.exists(), "{} left behind", dev.display());
    }
    let left = run(Command::new("dmsetup").args(["ls"]));
    assert!(!left.contains("loop"), "device-mapper targets left: {left}");
    fx.assert_clean();
}

fn adopts_a_kpartx_mapping() {
    let mut fx = Fixture::new();
    let img = fx.mbr_image("mbr.img");
    let dev = run(Command::new("losetup").args(["--find", "--show"]).arg(&img))
        .trim()
        .to_string();
    run(Command::new("kpartx").args(["-a", &dev]));
    let name = dev.trim_start_matches("/dev/");
    let part = format!("/dev/mapper/{name}p5");
    let mnt = fx.tree("mnt", &[]);
    run(Command::new("mount").arg(&part).arg(&mnt));
    let adopted = adopt(&mnt).unwrap();
    assert!(matches!(adopted, Adopted::Mounted(_)));
    assert_eq!(adopted.mapping(), Mapping::DeviceMapper);
    assert_eq!(adopted.partition(), Some(5));
    assert_eq!(adopted.attached_device(), Path::new(&dev));
    // kpartx mapped every partition; the other three still hold the loop
    // device, and teardown says so instead of pretending it is gone.
    let err = adopted.close().unwrap_err();
    assert_eq!(err.step(), Some(diskmount::Step::Detach), "{err}");
    assert!(err.to_string().contains("still bound"), "{err}");
    assert!(!Path::new(&part).exists());
    // Removing the rest by device (never by image path) frees the loop
    // device: teardown left it set to clear itself.
    run(Command::new("kpartx").args(["-d", &dev]));
    fx.assert_clean();
}

fn adopts_a_kernel_partition_node() {
    let mut fx = Fixture::new();
    let img = fx.mbr_image("mbr.img");
    let dev = run(Command::new("losetup")
        .args(["--find", "--show", "--partscan"])
        .arg(&img))
    .trim()
    .to_string();
    let part = format!("{dev}p6");
    let mnt = fx.tree("mnt", &[]);
    run(Command::new("mount").arg(&part).arg(&mnt));
    let adopted = adopt(&part).unwrap();
    assert_eq!(adopted.mapping(), Mapping::KernelNode);
    assert_eq!(adopted.partition(), Some(6));
    adopted.close().unwrap();
    fx.assert_clean();
}

fn block_backend_over_a_partitioned_device() {
    let mut fx = Fixture::new();
    let img = fx.gpt_image("gpt.img", 512);
    let dev = run(Command::new("losetup")
        .args(["--find", "--show", "--partscan"])
        .arg(&img))
    .trim()
    .to_string();
    let mnt = fx.tree("mnt", &[]);
    let t = Unattached::<Block>::new(Image::block(&dev).unwrap())
        .attach()
        .unwrap()
        .map(Partition::Auto)
        .unwrap()
        .mount(&mnt, &MountOptions::default())
        .unwrap();
    assert_eq!(t.mapped().mapping(), Mapping::KernelNode);
    assert_eq!(std::fs::read_to_string(t.path().join("id")).unwrap(), "p2");
    t.close().unwrap();
    // Not ours: the device and its partition nodes stay.
    assert!(Path::new(&format!("{dev}p2")).exists());
    run(Command::new("losetup").args(["-d", &dev]));
    fx.assert_clean();
}

/// A test: its name, the kernel features it needs, its body.
type Case = (&'static str, &'static [Needs], fn());

fn main() {
    let in_lane = std::env::var("DISKMOUNT_VM_LANE").as_deref() == Ok("1");
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let cases: [Case; 6] = [
        (
            "kernel_nodes_for_every_mbr_partition",
            &[Needs::PartitionParsers],
            kernel_nodes_for_every_mbr_partition,
        ),
        (
            "kernel_nodes_for_a_4096_byte_sector_gpt",
            &[Needs::PartitionParsers],
            kernel_nodes_for_a_4096_byte_sector_gpt,
        ),
        (
            "device_mapper_for_primary_and_logical_partitions",
            &[Needs::DeviceMapper],
            device_mapper_for_primary_and_logical_partitions,
        ),
        (
            "adopts_a_kpartx_mapping",
            &[Needs::DeviceMapper, Needs::PartitionParsers],
            adopts_a_kpartx_mapping,
        ),
        (
            "adopts_a_kernel_partition_node",
            &[Needs::PartitionParsers],
            adopts_a_kernel_partition_node,
        ),
        (
            "block_backend_over_a_partitioned_device",
            &[Needs::PartitionParsers],
            block_backend_over_a_partitioned_device,
        ),
    ];
    let (mut passed, mut failed, mut skipped) = (0, 0, Vec::new());
    for (name, needs, case) in cases {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let missing: Vec<Needs> = needs.iter().copied().filter(|n| !available(*n)).collect();
        if !missing.is_empty() {
            if in_lane {
                println!("test {name} ... FAILED (the lane's kernel lacks {missing:?})");
                failed += 1;
            } else {
                println!("test {name} ... not run here: this kernel lacks {missing:?}");
                skipped.push(name);
            }
            continue;
        }
        match catch_unwind(AssertUnwindSafe(case)) {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    if !skipped.is_empty() {
        println!(
            "not run on this kernel (they run in the kernel VM lane, tests/vm/): {}",
            skipped.join(", ")
        );
    }
    println!(
        "kernel-lane: {passed} passed, {failed} failed, {} skipped",
        skipped.len()
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
