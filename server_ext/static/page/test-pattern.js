// A generated video source for when no webcam is available: four coloured quadrants and a
// white square that moves, so both the colours and the motion can be checked on the way back.

const QUADRANT_COLOURS = ["#d02020", "#20b040", "#2040d0", "#e0c020"];

/** Starts drawing on a canvas; returns {stream, stop()} with the canvas's video track. */
export function startTestPattern(width = 512, height = 512, fps = 30) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  let frame = 0;

  function draw() {
    const w = width / 2;
    const h = height / 2;
    QUADRANT_COLOURS.forEach((colour, i) => {
      ctx.fillStyle = colour;
      ctx.fillRect((i % 2) * w, Math.floor(i / 2) * h, w, h);
    });
    const size = Math.round(Math.min(width, height) / 8);
    const x = (frame * 4) % (width - size);
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(x, (height - size) / 2, size, size);
    ctx.fillStyle = "#000000";
    ctx.font = `${Math.round(size / 2)}px monospace`;
    ctx.fillText(`test pattern ${frame}`, 8, size / 2 + 4);
    frame += 1;
  }

  draw();
  // A timer, not requestAnimationFrame: frames must keep coming when the tab is hidden.
  const timer = setInterval(draw, 1000 / fps);
  const stream = canvas.captureStream(fps);
  return {
    stream,
    stop() {
      clearInterval(timer);
      stream.getTracks().forEach((track) => track.stop());
    },
  };
}
