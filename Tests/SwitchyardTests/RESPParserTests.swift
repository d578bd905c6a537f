import NIOCore
@testable import Redis
import Testing

/// The RESP3 parser: every type, every split, and hostile bytes refused with an error rather than a trap or a hang.
@Suite struct RESPParserTests {
    /// One reply of every type (attributes dropped, RESP2 nulls as null), and the values they must give.
    static let wire = Array((
        "+OK\r\n" + "-ERR unknown command\r\n" + ":-42\r\n" + "$5\r\nhe\r\no\r\n" + "$0\r\n\r\n" + "$-1\r\n" + "*-1\r\n"
            + "_\r\n" + "#t\r\n" + "#f\r\n" + ",3.25\r\n" + ",-inf\r\n" + "(-3492890328409238509324850943850943825024385\r\n"
            + "!21\r\nSYNTAX invalid syntax\r\n" + "=15\r\ntxt:Some string\r\n"
            + "*3\r\n:1\r\n*1\r\n+nested\r\n%1\r\n+k\r\n:2\r\n" + "%2\r\n+first\r\n:1\r\n+second\r\n#f\r\n"
            + "~2\r\n+orange\r\n+apple\r\n" + ">3\r\n+message\r\n+channel\r\n$2\r\nhi\r\n"
            + "|1\r\n+key-popularity\r\n*2\r\n:1\r\n:2\r\n*2\r\n:3\r\n:4\r\n" + "*0\r\n" + "%0\r\n"
    ).utf8)

    static let values: [RESPValue] = [
        .simpleString("OK"), .error(RedisServerError("ERR unknown command")), .integer(-42),
        .bulkString(Array("he\r\no".utf8)), .bulkString([]), .null, .null, .null, .boolean(true), .boolean(false),
        .double(3.25), .double(-.infinity), .bigNumber("-3492890328409238509324850943850943825024385"),
        .error(RedisServerError("SYNTAX invalid syntax")), .verbatimString(format: "txt", text: Array("Some string".utf8)),
        .array([.integer(1), .array([.simpleString("nested")]), .map([.init(.simpleString("k"), .integer(2))])]),
        .map([.init(.simpleString("first"), .integer(1)), .init(.simpleString("second"), .boolean(false))]),
        .set([.simpleString("orange"), .simpleString("apple")]),
        .push([.simpleString("message"), .simpleString("channel"), .bulkString(Array("hi".utf8))]),
        .array([.integer(3), .integer(4)]), .array([]), .map([]),
    ]

    static func parseAll(_ chunks: [[UInt8]], limits: RESPParser.Limits = .init()) throws(RESPParseError) -> [RESPValue] {
        var parser = RESPParser(limits: limits)
        var values: [RESPValue] = []
        for chunk in chunks {
            parser.append(chunk)
            while let value = try parser.next() { values.append(value) }
        }
        return values
    }

    @Test func everyTypeParsesWholeAndSplitAtEveryByte() throws {
        #expect(try Self.parseAll([Self.wire]) == Self.values)
        for cut in 1..<Self.wire.count {
            let parts = [Array(Self.wire[..<cut]), Array(Self.wire[cut...])]
            #expect(try Self.parseAll(parts) == Self.values, "cut at \(cut)")
        }
        // One byte at a time.
        #expect(try Self.parseAll(Self.wire.map { [$0] }) == Self.values)
    }

    /// Commands as RESP arrays of bulk strings; numbers as their decimal text, the extremes included.
    @Test func commandsEncodeNumbersAsDecimalText() {
        var buffer = ByteBuffer()
        RESPCommand.encode(["SET", "k\r\n", .integer(0), .integer(-42), .integer(Int64.min), .integer(Int64.max), .bytes([0, 255]),
                            .integer(UInt64.max)], into: &buffer)
        let expected = "*8\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$1\r\n0\r\n$3\r\n-42\r\n$20\r\n-9223372036854775808\r\n"
            + "$19\r\n9223372036854775807\r\n$2\r\n\u{0}\u{FF}\r\n$19\r\n9223372036854775807\r\n"
        #expect(buffer.readableBytesView.elementsEqual(Array(expected.unicodeScalars.map { UInt8($0.value) })))
        for value: Int64 in [0, 9, 10, 99, 100, -1, -10, 1_000_000, .max, .min] {
            var digits = ByteBuffer()
            digits.writeWithUnsafeMutableBytes(minimumWritableBytes: 20) { RESPCommand.writeDecimal(value, into: $0) }
            #expect(digits.readString(length: digits.readableBytes) == String(value))
            #expect(RESPCommand.decimalDigits(value) == String(value).utf8.count)
        }
    }

    @Test func aValueIsNotReturnedBeforeItsLastByte() throws {
        var parser = RESPParser()
        parser.append(Array("*2\r\n$3\r\nfoo\r\n$3\r\nba".utf8))
        #expect(try parser.next() == nil)
        #expect(parser.isMidValue)
        parser.append(Array("r\r".utf8))
        #expect(try parser.next() == nil)
        parser.append(Array("\n".utf8))
        #expect(try parser.next() == .array([.bulkString(Array("foo".utf8)), .bulkString(Array("bar".utf8))]))
        #expect(!parser.isMidValue)
    }

    @Test func hostileBytesAreRefused() {
        let small = RESPParser.Limits(line: 24, bulk: 8, elements: 4, depth: 3)
        let cases: [(String, RESPParseError)] = [
            ("?what\r\n", .unknownType(UInt8(ascii: "?"))),
            ("\r\n", .unknownType(0)),
            (":12a\r\n", .badNumber),
            (":\r\n", .badNumber),
            (":99999999999999999999\r\n", .badNumber),
            (":9223372036854775808\r\n", .badNumber),
            ("$-2\r\n", .badNumber),
            ("*-5\r\n", .badNumber),
            ("%-1\r\n", .badNumber),
            ("$3\r\nabcd\r\n", .badFraming),
            ("+a\rb\r\n", .badFraming),
            ("#x\r\n", .badValue),
            (",1.2.3.4\r\n", .badValue),
            (",0x10\r\n", .badValue),
            ("=2\r\nab\r\n", .badValue),
            ("(12x\r\n", .badNumber),
            ("_x\r\n", .badValue),
            ("$?\r\n", .streamedType),
            ("*?\r\n", .streamedType),
            ("+0123456789abcdefXYZ0123456789\r\n", .tooLarge),
            ("+0123456789abcdefXYZ0123456789", .tooLarge),
            ("$9\r\n", .tooLarge),
            ("*5\r\n", .tooLarge),
            ("%3\r\n", .tooLarge),
            ("*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", .tooLarge),
        ]
        for (input, expected) in cases {
            #expect(throws: expected, "\(input.debugDescription)") {
                _ = try Self.parseAll([Array(input.utf8)], limits: small)
            }
        }
        // Within the bounds, the same shapes parse.
        let nested = try? Self.parseAll([Array("*1\r\n*1\r\n:1\r\n$8\r\n12345678\r\n".utf8)], limits: small)
        #expect(nested == [.array([.array([.integer(1)])]), .bulkString(Array("12345678".utf8))])
        let extremes = try? Self.parseAll([Array(":9223372036854775807\r\n:-9223372036854775807\r\n".utf8)])
        #expect(extremes == [.integer(.max), .integer(-.max)])
    }

    @Test func aCountIsAClaimNotMemory() throws {
        // A header announcing sixteen million elements holds nothing until elements arrive.
        var parser = RESPParser()
        parser.append(Array("*16000000\r\n:1\r\n".utf8))
        #expect(try parser.next() == nil)
        #expect(parser.bufferedBytes == 0)
    }

    @Test func commandsAreArraysOfBulkStrings() throws {
        var buffer = ByteBuffer()
        RESPCommand.encode(["SET", "kéy", .bytes([0, 13, 10]), .integer(-7)], into: &buffer)
        #expect(String(buffer: buffer) == "*4\r\n$3\r\nSET\r\n$4\r\nkéy\r\n$3\r\n\u{0}\r\n\r\n$2\r\n-7\r\n")
        // What the server would read back, as an array of bulk strings.
        var parser = RESPParser()
        parser.append(buffer)
        let parsed = try parser.next()
        #expect(parsed?.elements?.compactMap(\.bytes) == [Array("SET".utf8), Array("kéy".utf8), [0, 13, 10], Array("-7".utf8)])
    }

    @Test func theScriptHashIsRedisOwn() {
        // SCRIPT LOAD "return 1" answers with this SHA-1.
        #expect(RedisScript("return 1").sha1 == "e0e1f9fabfc9d4800c877a703b823ac0578ff8db")
    }

    @Test func backoffGrowsWithFailuresAndResetsOnSuccess() {
        var backoff = ReconnectBackoff(base: .milliseconds(100), maximum: .seconds(1))
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
        #expect(backoff.mayConnect(at: start))
        backoff.failed(at: start, random: 0.999)
        #expect(!backoff.mayConnect(at: start + .milliseconds(90)))
        #expect(backoff.mayConnect(at: start + .milliseconds(100)))
        for _ in 0..<10 { backoff.failed(at: start, random: 0.999) }
        // Capped at the maximum, however many failures.
        #expect(!backoff.mayConnect(at: start + .milliseconds(900)))
        #expect(backoff.mayConnect(at: start + .seconds(1)))
        backoff.succeeded()
        #expect(backoff.mayConnect(at: start))
        #expect(backoff.failures == 0)
    }
}
