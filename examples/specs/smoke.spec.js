// The app starts and shows its first screen.
const { test, expect } = require("appwright");

test("launches to the welcome screen", async ({ device }) => {
  await expect(device.getByText("Welcome")).toBeVisible({ timeout: 30_000 });
});
