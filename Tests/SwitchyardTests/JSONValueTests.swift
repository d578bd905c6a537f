import SwitchyardModels
import Testing

@Suite struct JSONValueTests {
    @Test func parsesEveryKind() throws {
        let value = try JSONValue.parse(#" {"a": [1, -2.5e3, true, false, null, "x\"\\\/\n\u00e9\ud83d\ude00"], "b": {}} "#)
        #expect(value == ["a": [1, -2500.0, true, false, nil, "x\"\\/\né😀"], "b": [:]])
    }

    @Test func keepsLargeIntegersExact() throws {
        #expect(try JSONValue.parse("9007199254740993") == .int(9_007_199_254_740_993))
    }

    @Test(arguments: ["", "{", "[1,]", "{\"a\" 1}", "tru", "01", "1.", "\"\\x\"", "\"\u{01}\"", "[1] x", "\"\\ud800\""])
    func rejectsInvalidDocuments(_ text: String) {
        #expect(throws: JSONParseError.self) { try JSONValue.parse(text) }
    }

    @Test func rejectsHostileNesting() {
        let deep = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        #expect(throws: JSONParseError.self) { try JSONValue.parse(deep) }
    }

    @Test func serializesAndParsesBack() throws {
        let value: JSONValue = ["s": "tab\there \"q\" \u{01}", "n": 0.1, "i": -7, "a": [nil, true], "o": ["k": "v"]]
        #expect(try JSONValue.parse(value.serialized()) == value)
        #expect(value.jsonString(sortedKeys: true) == #"{"a":[null,true],"i":-7,"n":0.1,"o":{"k":"v"},"s":"tab\there \"q\" \u0001"}"#)
    }

    @Test func parseMembersBuildsOnlyTheNamedMembersAndStillChecksSyntax() throws {
        let text = #"{"id":"x","choices":[{"message":{"content":"say \"usage\": {}"}}],"usage":{"prompt_tokens":3},"n":[1,{"a":null}]}"#
        #expect(try JSONValue.parseMembers(Array(text.utf8), keys: ["usage"]) == ["usage": ["prompt_tokens": 3]])
        #expect(throws: JSONParseError.self) { try JSONValue.parseMembers(Array(#"{"a":[1,}"#.utf8), keys: ["usage"]) }
        #expect(throws: JSONParseError.self) { try JSONValue.parseMembers(Array(#"{"a":"x"} extra"#.utf8), keys: []) }
        #expect(throws: JSONParseError.self) { try JSONValue.parseMembers(Array("[1]".utf8), keys: []) }
        // Skipped numbers are still checked, without being built.
        for bad in [#"{"a":01}"#, #"{"a":1.}"#, #"{"a":-}"#, #"{"a":1e}"#, #"{"a":[2,.5]}"#] {
            #expect(throws: JSONParseError.self) { try JSONValue.parseMembers(Array(bad.utf8), keys: ["usage"]) }
        }
        #expect(try JSONValue.parseMembers(Array(#"{"a":-0.5e+3,"b":[1E2,0]}"#.utf8), keys: ["usage"]) == [:])
        // A key written with escapes is still the key it spells.
        let escaped = #"{"us\u0061ge":{"k":1},"usag\u0065x":2}"#
        #expect(try JSONValue.parseMembers(Array(escaped.utf8), keys: ["usage"]) == ["usage": ["k": 1]])
    }
}
