//! Nothing to generate. `protoc-bin-vendored` is a build dependency so that cargo unpacks the
//! vendored protoc before etcd-client's build script runs it (see `infra/protoc`).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
