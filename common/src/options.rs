//! QEMU's option syntax, which the core's cold-plug options and the QEMU
//! front end both read: items separated by `,`, where `,,` is a comma
//! within an item.

/// The items of `text`.
pub fn split(text: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut item = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            (',', Some(',')) => {
                chars.next();
                item.push(',');
            }
            (',', _) => items.push(std::mem::take(&mut item)),
            _ => item.push(c),
        }
    }
    items.push(item);
    items
}

/// `value` as one item: its commas doubled.
pub fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubled_commas_stay_in_their_item_and_escape_undoes_split() {
        assert_eq!(split("a=1,,2,b,,,c"), ["a=1,2", "b,", "c"]);
        assert_eq!(split(""), [""]);
        for value in ["x", "a,b", ",,", "", "a,"] {
            assert_eq!(split(&escape(value)), [value]);
        }
    }
}
