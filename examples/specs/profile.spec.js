// AppWright spec: profile
const { test, expect } = require("appwright");

test("profile", async ({ device }) => {
  await device.getByText("Welcome").waitFor({ state: "visible" });
  await expect(device.getByText("Welcome")).toBeVisible();
});
