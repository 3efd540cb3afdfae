//! Prints the size table of `docs/format-event.md`: the binary and JSON size of the
//! sample event of every kind.

use bourse_model::samples::sample;
use bourse_model::EventKind;

fn main() -> Result<(), bourse_model::Error> {
    println!("| kind | number | binary bytes | JSON bytes |");
    println!("|---|---:|---:|---:|");
    for kind in EventKind::ALL {
        let event = sample(kind, 7);
        println!(
            "| `{}` | {} | {} | {} |",
            kind.name(),
            kind.as_u16(),
            event.encode()?.len(),
            event.to_json().len()
        );
    }
    Ok(())
}
