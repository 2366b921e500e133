// Placeholder Phaser scene: a bouncing Raspberry and the API's greeting, fetched through the
// frontend's /api route, so the page shows at a glance that nginx, the API and routing work.
/* global Phaser */
"use strict";

class PlaceholderScene extends Phaser.Scene {
  constructor() {
    super("placeholder");
  }

  create() {
    const { width, height } = this.scale;
    this.add.text(width / 2, 40, "picluster", { fontSize: "32px", color: "#c51a4a" }).setOrigin(0.5);
    const status = this.add.text(width / 2, height - 40, "asking the API...", { fontSize: "16px" });
    status.setOrigin(0.5);

    const berry = this.add.circle(width / 2, height / 2, 24, 0xc51a4a);
    this.physics.add.existing(berry);
    berry.body.setVelocity(180, 140).setBounce(1, 1).setCollideWorldBounds(true);

    fetch("api/hello")
      .then((response) => response.json())
      .then((body) => status.setText(`${body.message} (${body.hostname})`))
      .catch(() => status.setText("API not reachable"));
  }
}

new Phaser.Game({
  type: Phaser.AUTO,
  parent: "game",
  width: 800,
  height: 600,
  backgroundColor: "#1b2330",
  physics: { default: "arcade" },
  scene: [PlaceholderScene],
});
