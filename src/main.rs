fn main() {
    std::process::exit(comfix::cli::main());
}
