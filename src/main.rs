fn main() {
    let path = std::env::args().nth(1).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    match lstmc::front::load(&path, &bytes) {
        Ok(m) => print!("{}", m.summary()),
        Err(d) => eprint!("{}", d.render()),
    }
}
