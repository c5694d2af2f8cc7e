// Preloaded with `node --require` so a third-party server that binds every
// interface (server-everything: app.listen(PORT)) listens on 127.0.0.1 only.
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const first = args[0];
  if (typeof first === "number" || (typeof first === "string" && /^\d+$/.test(first))) {
    const callbacks = args.slice(1).filter((a) => typeof a === "function");
    return listen.call(this, Number(first), "127.0.0.1", ...callbacks);
  }
  return listen.apply(this, args);
};
