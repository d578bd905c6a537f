/// Scheme, host and port of an upstream, and the path prefix of its base URL.
public struct UpstreamEndpoint: Hashable, Sendable {
    public var tls: Bool
    public var host: String
    public var port: Int
    public var basePath: String

    /// Parses `http[s]://host[:port][/prefix]`; nil for anything else.
    public init?(baseURL: String) {
        var rest = Substring(baseURL)
        if rest.hasPrefix("http://") {
            tls = false
            rest = rest.dropFirst(7)
        } else if rest.hasPrefix("https://") {
            tls = true
            rest = rest.dropFirst(8)
        } else {
            return nil
        }
        let authority = rest.prefix { $0 != "/" }
        var path = rest.dropFirst(authority.count)
        while path.hasSuffix("/") { path = path.dropLast() }
        basePath = String(path)
        if authority.hasPrefix("[") {  // [IPv6]:port
            guard let close = authority.firstIndex(of: "]") else { return nil }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            guard let port = after.isEmpty ? (tls ? 443 : 80) : Int(after.dropFirst()) else { return nil }
            self.port = port
        } else if let colon = authority.lastIndex(of: ":") {
            host = String(authority[..<colon])
            guard let port = Int(authority[authority.index(after: colon)...]) else { return nil }
            self.port = port
        } else {
            host = String(authority)
            port = tls ? 443 : 80
        }
        guard !host.isEmpty, (1...65535).contains(port) else { return nil }
    }

    /// The `Host` header value.
    public var hostHeader: String {
        let defaultPort = tls ? 443 : 80
        let name = host.contains(":") ? "[\(host)]" : host
        return port == defaultPort ? name : "\(name):\(port)"
    }
}
