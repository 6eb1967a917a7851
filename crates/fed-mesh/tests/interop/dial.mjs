// A standard libp2p client in another language (js-libp2p over TCP, Noise,
// Yamux) connects to a fed-mesh node, runs identify and ping against it, and
// prints what it learnt as one line of JSON. Used by tests/net/interop.rs.
//
//   node dial.mjs /ip4/127.0.0.1/tcp/<port>/p2p/<peer id>

// js-libp2p 3 uses Promise.withResolvers (Node.js 22); give Node.js 20 one.
if (!Promise.withResolvers) {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((a, b) => { resolve = a; reject = b })
    return { promise, resolve, reject }
  }
}

const { createLibp2p } = await import('libp2p')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@chainsafe/libp2p-yamux')
const { identify } = await import('@libp2p/identify')
const { ping } = await import('@libp2p/ping')
const { multiaddr } = await import('@multiformats/multiaddr')

const target = multiaddr(process.argv[2])
const node = await createLibp2p({
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify(), ping: ping() },
})
try {
  const connection = await node.dial(target, { signal: AbortSignal.timeout(10000) })
  const rtt = await node.services.ping.ping(target, { signal: AbortSignal.timeout(10000) })
  const info = await node.services.identify.identify(connection, { signal: AbortSignal.timeout(10000) })
  console.log(JSON.stringify({
    peer: connection.remotePeer.toString(),
    encryption: connection.encryption,
    multiplexer: connection.multiplexer,
    pingMs: rtt,
    protocolVersion: info.protocolVersion,
    agentVersion: info.agentVersion,
    protocols: info.protocols,
  }))
} finally {
  await node.stop()
}
