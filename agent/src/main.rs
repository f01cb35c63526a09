fn main() {
    let obj = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));
    let mut ebpf = aya::Ebpf::load(obj).unwrap();
    let prog: &mut aya::programs::TracePoint = ebpf
        .program_mut("inet_sock_set_state")
        .unwrap()
        .try_into()
        .unwrap();
    prog.load().unwrap();
    prog.attach("sock", "inet_sock_set_state").unwrap();
    println!("attached");
}
