fn main() {
    // A host may dlclose() the module while its threads still run; -z nodelete keeps our
    // code mapped so late calls and thread destructors never jump into unmapped memory.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
}
